// The /v1 API from the dashboard: the key (asked for once, kept in this tab's
// sessionStorage), JSON requests relative to the app's root, problems as errors.

const STORE = "chunkq.apiKey";
export const root = document.body.dataset.root;
const authOn = document.body.dataset.auth === "on";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function currentKey() {
  return sessionStorage.getItem(STORE);
}

let asking = null;

// Ask for a key in the page's dialog; every caller waiting at once shares one dialog.
export function askForKey(reason) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = reason;
  input.value = "";
  asking = new Promise((resolve) => {
    const done = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(STORE, key);
      form.removeEventListener("submit", done);
      dialog.close();
      asking = null;
      showKeyState();
      resolve(key);
    };
    form.addEventListener("submit", done);
  });
  dialog.showModal();
  input.focus();
  return asking;
}

function showKeyState() {
  const state = document.getElementById("key-state");
  const key = currentKey();
  state.textContent = !authOn ? "auth off" : key ? `key …${key.slice(-4)}` : "";
  document.getElementById("forget-key").hidden = !authOn || !key;
  document.getElementById("enter-key").hidden = !authOn || Boolean(key);
}

// The dialog closed with Escape leaves the requests waiting for a key: this opens it again.
document.getElementById("enter-key").addEventListener("click", () => {
  const dialog = document.getElementById("key-dialog");
  if (asking && !dialog.open) dialog.showModal();
  else if (!asking) askForKey("Enter an API key.").then(() => location.reload());
});

document.getElementById("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(STORE);
  showKeyState();
  location.reload();
});
showKeyState();

// A request to the API (path relative to the app's root, e.g. "v1/analyze"). With auth on,
// it asks for the key before the first request, and again when a key is refused (401).
export async function request(path, { method = "GET", body, accept = "application/json" } = {}) {
  for (;;) {
    if (authOn && !currentKey()) await askForKey("This server needs an API key.");
    const headers = { Accept: accept };
    const key = currentKey();
    if (authOn && key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(root + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (response.status === 401 && authOn) {
      sessionStorage.removeItem(STORE);
      await askForKey("That key was refused (unknown or revoked): enter another.");
      continue;
    }
    if (!response.ok) {
      let problem = {};
      try {
        problem = await response.json();
      } catch {
        problem = { title: response.statusText };
      }
      throw new ApiError(response.status, problem);
    }
    return response;
  }
}

export async function getJSON(path) {
  return (await request(path)).json();
}

export async function postJSON(path, body) {
  return (await request(path, { method: "POST", body })).json();
}

// Save what the API answers as a file: the key goes in a header, so a plain link cannot.
export async function download(path, filename, accept) {
  const response = await request(path, { accept });
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
