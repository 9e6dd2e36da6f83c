// Type-checked only (tsconfig.esnext.json): `using` ends the client through `[Symbol.dispose]`.
import { PresenceClient } from "@presence-rs/presence";

export function once(url: string, token: string): void {
  using client = PresenceClient.connect({ url, token });
  client.join("general");
}
