// The methods of `PresenceClient`. Each calls the class's one wasm entry point `c(op, a, b)`,
// `op` being the method's index here (the order of `Op` in lib.rs; a native test checks that
// they agree): a wasm-bindgen export per method cost the bundle its own shim and glue.
const METHODS = [
  "join", "leave", "watch", "unwatch", "setStatus", "typing", "stopTyping", "bindTyping",
  "markRead", "members", "onPresence", "onTyping", "onReceipt", "onConnection", "onSelfStatus",
  "onError", "subscribe", "getSnapshot", "close", "setToken",
];

// Defines them on the prototype of `client` (once), as a class body would: not enumerable.
export function defineMethods(client) {
  const proto = Object.getPrototypeOf(client);
  if (proto.join) return;
  METHODS.forEach((name, op) =>
    Object.defineProperty(proto, name, {
      // `markRead`'s marker as the generated glue took it: `+marker`.
      value: function (a, b) { return this.c(op, a, op == 8 ? +b : b); },
      writable: true,
      configurable: true,
    }),
  );
}
