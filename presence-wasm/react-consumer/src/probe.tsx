// The consumer test's probe (not part of the README's app): each hook in its own component,
// which appends what the hook returned to `window.commits[name]` at every commit of that
// component (an effect without dependencies: once per commit, and once more on StrictMode's
// simulated remount). The test checks that two commits in a row never saw the same value, that
// is a component re-rendered only when its slice changed, while the snapshot changed more often.
import { useEffect } from "react";
import {
  PresenceProvider,
  useConnection,
  usePresence,
  usePresenceClient,
  useRoomCounts,
  useTyping,
  useUser,
} from "@presence-rs/react";

declare global {
  interface Window {
    commits: Record<string, string[]>;
    snapshots: number;
  }
}
window.commits = {};
window.snapshots = 0;

const query = new URLSearchParams(location.search);
const room = query.get("room") ?? "general";
const watched = query.get("watch") ?? "bob";

function useRecord(name: string, value: unknown) {
  useEffect(() => {
    (window.commits[name] ??= []).push(JSON.stringify(value ?? null));
  });
}

function Members() {
  useRecord("members", usePresence(room));
  return null;
}

function Typing() {
  useRecord("typing", useTyping(room));
  return null;
}

/** Also rendered, as `#counts`, for the test to follow the room's numbers. */
function Counts() {
  const counts = useRoomCounts(room);
  useRecord("counts", counts);
  if (!counts) return null;
  return (
    <p id="counts" data-online={counts.online} data-active={counts.active} data-idle={counts.idle}>
      {counts.online} online · {counts.active} active · {counts.idle} idle
    </p>
  );
}

function User() {
  useRecord("user", useUser(watched));
  return null;
}

function Connection() {
  useRecord("connection", useConnection());
  return null;
}

/** Counts the distinct snapshots the hooks were offered. */
function Snapshots() {
  const client = usePresenceClient();
  useEffect(() => {
    let last = client.getSnapshot();
    return client.subscribe(() => {
      if (client.getSnapshot() !== last) (last = client.getSnapshot()), window.snapshots++;
    });
  }, [client]);
  return null;
}

export default function Probe() {
  return (
    <PresenceProvider options={{ url: query.get("server") ?? "", token: query.get("user") ?? "" }}>
      <Snapshots />
      <Members />
      <Typing />
      <Counts />
      <User />
      <Connection />
    </PresenceProvider>
  );
}
