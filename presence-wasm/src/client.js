// The methods of `PresenceClient`. Each calls the class's one wasm entry point `c(op, a, b)`,
// `op` being the method's index here (the order of `Op` in lib.rs; a native test checks that
// they agree): a wasm-bindgen export per method cost the bundle its own shim and glue.
const METHODS = [
  "join", "leave", "watch", "unwatch", "setStatus", "typing", "stopTyping", "bindTyping",
  "markRead", "members", "onPresence", "onTyping", "onReceipt", "onConnection", "onSelfStatus",
  "onError", "subscribe", "getSnapshot", "close", "setToken", "setData", "view", "setPrivacy",
];

// Defines them on `client` itself, bound to it, so they work passed on alone
// (`useSyncExternalStore(client.subscribe, client.getSnapshot)`, `onClick={client.close}`);
// not enumerable, as in a class body. `free` is `close` (see lib.rs).
export function defineMethods(client) {
  const methods = {};
  METHODS.forEach((name, op) => {
    // `markRead`'s marker as the generated glue took it: `+marker`.
    methods[name] = { value: (a, b) => client.c(op, a, op == 8 ? +b : b) };
  });
  // `setPrivacy(settings)` hands over its two fields.
  methods.setPrivacy = { value: (s) => client.c(22, s?.lastSeen, s?.receipts) };
  let raw, shared;
  const snapshot = methods.getSnapshot.value;
  methods.getSnapshot = { value: () => (raw === (raw = snapshot()) ? shared : (shared = share(shared, raw))) };
  methods.free = methods.close;
  Object.defineProperties(client, methods);
}

// `next` with each part that is deep-equal to the same part of `prev` replaced by it, so an
// unchanged room, member list or user keeps its identity across snapshots and selectors can
// compare by reference; `prev` itself when nothing changed. In lists, users pair up by `user`
// (lists are sorted by it, so one arriving shifts the others). Snapshots are fresh plain objects
// and arrays of strings, numbers and booleans, not yet seen by the app when this edits them.
function share(prev, next) {
  if (prev === next || !prev || !next || typeof prev != "object" || typeof next != "object") return next;
  const keys = Object.keys(next);
  const users = Array.isArray(prev) && new Map(prev.map((p) => [p.user, p]));
  let same = Array.isArray(prev) == Array.isArray(next) && keys.length == Object.keys(prev).length;
  for (const k of keys) {
    const user = users && next[k].user;
    const v = (next[k] = share(user ? users.get(user) : prev[k], next[k]));
    same = same && Object.hasOwn(prev, k) && v === prev[k];
  }
  return same ? prev : next;
}
