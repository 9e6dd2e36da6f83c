// Screen lock through the Idle Detection API, only where the page already
// holds the `idle-detection` permission: this never prompts. If the app gets
// the permission later (`IdleDetector.requestPermission()` in a click), the
// permission's change event starts the detector then. Calls `onLock(locked)`;
// returns a function that stops watching.
export function watchScreenLock(onLock) {
  const stop = new AbortController();
  const start = () => {
    const detector = new IdleDetector();
    detector.onchange = () => onLock(detector.screenState === "locked");
    return detector.start({ threshold: 60000, signal: stop.signal });
  };
  if ("IdleDetector" in globalThis) {
    navigator.permissions
      .query({ name: "idle-detection" })
      .then((status) => {
        const granted = () => status.state === "granted" && !stop.signal.aborted;
        if (granted()) return start();
        status.onchange = () => granted() && ((status.onchange = null), start().catch(() => {}));
      })
      .catch(() => {});
  }
  return () => stop.abort();
}
