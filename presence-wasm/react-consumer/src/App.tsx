import { PresenceProvider, useConnection, usePresence, usePresenceClient, useTyping } from "@presence-rs/react";

// Here from the page's URL (`?server=ws://localhost:4000/ws&user=ana`, against
// `presence-server --dev-auth`, where the token is the user name); in an app, from its config and
// its auth.
const query = new URLSearchParams(location.search);
const options = { url: query.get("server") ?? "ws://localhost:4000/ws", token: query.get("user") ?? "ana" };

export default function App() {
  return (
    <PresenceProvider options={options} fallback={<p>Loading…</p>}>
      <Room room="general" />
    </PresenceProvider>
  );
}

function Room({ room }: { room: string }) {
  const client = usePresenceClient();
  return (
    <main>
      <Connection />
      <Members room={room} />
      <Typing room={room} />
      <textarea
        placeholder="Say something"
        onInput={() => client.typing(room)}
        onBlur={() => client.stopTyping(room)}
      />
    </main>
  );
}

function Connection() {
  const { state, stale } = useConnection();
  return <p id="connection">{stale ? `${state}…` : state}</p>;
}

function Members({ room }: { room: string }) {
  const members = usePresence(room);
  const { stale } = useConnection();
  return (
    <ul id="members" style={{ opacity: stale ? 0.5 : 1 }}>
      {members.map((m) => (
        <li key={m.user} data-user={m.user} data-state={m.state}>
          {m.user} · {m.state}
          {m.reason && ` (${m.reason})`}
        </li>
      ))}
    </ul>
  );
}

function Typing({ room }: { room: string }) {
  const typing = useTyping(room);
  return <p id="typing">{typing.length > 0 && `${typing.join(", ")} typing…`}</p>;
}
