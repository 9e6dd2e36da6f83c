import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import App from "./App.tsx";
import Probe from "./probe.tsx";

declare global {
  interface Window {
    /** For the test: unmounts the app, which must close its client. */
    unmount: () => void;
  }
}

// `?probe`: the test's third user, who records what each hook returned at each commit.
const root = createRoot(document.getElementById("root")!);
root.render(<StrictMode>{new URLSearchParams(location.search).has("probe") ? <Probe /> : <App />}</StrictMode>);
window.unmount = () => root.unmount();
