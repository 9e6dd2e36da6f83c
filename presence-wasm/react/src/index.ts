// React bindings for the presence SDK: `PresenceProvider` owns one client, and each hook reads
// one slice of the client's snapshot through `useSyncExternalStore`. The SDK keeps every part of
// a new snapshot that did not change the same object, so a slice compared by reference (what
// `useSyncExternalStore` does) re-renders its component only when that slice changed.

import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import init, {
  PresenceClient,
  type ConnectOptions,
  type ConnectionState,
  type Presence,
  type PresenceSnapshot,
  type RoomCounts,
} from "@presence-rs/presence";

/** The WebAssembly module, loaded once per page (and again after a failure). */
let loaded: Promise<unknown> | undefined;

function load(): Promise<unknown> {
  loaded ??= init().catch((error: unknown) => {
    loaded = undefined;
    throw error;
  });
  return loaded;
}

/** What the hooks under one provider share. */
interface Store {
  client: PresenceClient;
  /** Joins a room until the returned function is called (and no other hook holds it). */
  room: (room: string) => () => void;
  /** Watches a user, in the same way. */
  user: (user: string) => () => void;
}

const StoreContext = createContext<Store | null>(null);

function store(client: PresenceClient): Store {
  // Once closed (the provider unmounted, or the server ended it for good), what the hooks still
  // ask for no longer matters, and the calls would throw `closed`.
  const open = (f: (key: string) => void) => (key: string) => {
    if (client.getSnapshot().connection !== "closed") f(key);
  };
  return {
    client,
    room: holds(open(client.join), open(client.leave)),
    user: holds(
      open((user) => client.watch([user])),
      open((user) => client.unwatch([user])),
    ),
  };
}

/**
 * Counts the hooks that need each key. The first calls `on`; the last to go calls `off` a
 * microtask later unless another came meanwhile, so StrictMode's unmount and remount, or a room
 * passed from one component to another in one commit, sends nothing.
 */
function holds(on: (key: string) => void, off: (key: string) => void) {
  // An entry stays at 0 while its `off` is pending.
  const count = new Map<string, number>();
  return (key: string) => {
    const n = count.get(key);
    if (n === undefined) on(key);
    count.set(key, (n ?? 0) + 1);
    return () => {
      const left = (count.get(key) ?? 1) - 1;
      count.set(key, left);
      if (left > 0) return;
      queueMicrotask(() => {
        if (count.get(key) !== 0) return;
        count.delete(key);
        off(key);
      });
    };
  };
}

/** The props of {@link PresenceProvider}. */
export interface PresenceProviderProps {
  /**
   * Read once, when the provider mounts (a new object on each render is fine). To connect with
   * other options, remount the provider with another `key`.
   */
  options: ConnectOptions;
  /** Rendered instead of the children until the client exists (the module loads first). */
  fallback?: ReactNode;
  children?: ReactNode;
}

/**
 * Owns one `PresenceClient` for its children: created after mount, closed on unmount. The
 * client is created a microtask after the effect, by which time StrictMode's simulated unmount
 * has cancelled the first effect's turn: one socket. Bad options and a module that fails to load
 * are thrown to the nearest error boundary.
 */
export function PresenceProvider({ options, fallback = null, children }: PresenceProviderProps): ReactNode {
  const [initial] = useState(options);
  const [state, setState] = useState<{ store: Store } | { error: unknown } | null>(null);
  useEffect(() => {
    let live = true;
    let client: PresenceClient | undefined;
    load()
      .then(() => {
        if (!live) return;
        client = PresenceClient.connect(initial);
        setState({ store: store(client) });
      })
      .catch((error: unknown) => {
        if (live) setState({ error });
      });
    return () => {
      live = false;
      client?.close();
    };
  }, [initial]);
  if (state === null) return fallback;
  if ("error" in state) throw state.error;
  return createElement(StoreContext.Provider, { value: state.store }, children);
}

function useStore(): Store {
  const store = useContext(StoreContext);
  if (!store) throw new Error("presence hooks must be used inside <PresenceProvider>");
  return store;
}

/** The provider's client, for what the hooks do not cover (`setStatus`, `typing`, `markRead`, …). */
export function usePresenceClient(): PresenceClient {
  return useStore().client;
}

/** `select` over the snapshot; re-renders when it returns another object (or value). */
function useSnapshot<T>(select: (snapshot: PresenceSnapshot) => T): T {
  const { client } = useStore();
  return useSyncExternalStore(client.subscribe, () => select(client.getSnapshot()));
}

/** Holds `key` (a room joined, a user watched) while the component is mounted. */
function useHold(kind: "room" | "user", key: string): void {
  const store = useStore();
  useEffect(() => store[kind](key), [store, kind, key]);
}

/** Every empty list, so a room's first snapshot (with no one typing) is no change. */
const NONE: readonly never[] = Object.freeze([]);
const some = <T>(list: readonly T[] | undefined): readonly T[] => (list?.length ? list : NONE);

/** The members of `room`, joined while a component uses it; empty until its snapshot arrives. */
export function usePresence(room: string): readonly Presence[] {
  useHold("room", room);
  return useSnapshot((s) => some(s.rooms[room]?.members));
}

/**
 * How many members of `room` are online, active and idle, joined while a component uses it;
 * `undefined` until its snapshot arrives. In a large room these are the server's counts (from its
 * `summary` frames), in a small one counted from the members. The SDK keeps unchanged counts the
 * same object, so a member typing or changing status does not re-render.
 */
export function useRoomCounts(room: string): RoomCounts | undefined {
  useHold("room", room);
  return useSnapshot((s) => s.rooms[room]?.counts);
}

/** Each typing list without this user (the server tells typers of their own typing too). */
const others = new WeakMap<readonly string[], readonly string[]>();

/** The other users typing in `room`, joined while a component uses it. */
export function useTyping(room: string): readonly string[] {
  useHold("room", room);
  return useSnapshot(({ rooms, me }) => {
    const typing = rooms[room]?.typing;
    if (!typing) return NONE;
    let list = others.get(typing);
    if (!list) others.set(typing, (list = some(typing.filter((user) => user !== me))));
    return list;
  });
}

/** `user`'s presence wherever they are, watched while a component uses it; `undefined` until known. */
export function useUser(user: string): Presence | undefined {
  useHold("user", user);
  return useSnapshot((s) => s.watched.find((p) => p.user === user));
}

/** What {@link useConnection} returns. */
export interface Connection {
  readonly state: ConnectionState;
  /** What the other hooks show may be out of date: render it greyed out, not as live. */
  readonly stale: boolean;
}

/** One object per state and staleness, so an unchanged connection is the same object. */
const connections = new Map<string, Connection>();

/** The connection's state and staleness. */
export function useConnection(): Connection {
  return useSnapshot(({ connection: state, stale }) => {
    const key = `${state} ${stale}`;
    let connection = connections.get(key);
    if (!connection) connections.set(key, (connection = Object.freeze({ state, stale })));
    return connection;
  });
}
