// The effp API as the dashboard uses it: the key of this tab, JSON calls that return
// the server's problem documents, uploads with progress, and job event streams.

const KEY = "effp.api-key";

/** The API key of this tab ("" on a server without keys). */
export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

/** Keeps `key` for this tab only (sessionStorage), or forgets it. */
export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** An answer that is not 2xx: the problem document (RFC 9457) the server sent. */
export class ProblemError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function problemOf(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    problem = { title: response.statusText };
  }
  return new ProblemError(response.status, problem);
}

/** Calls the API; resolves to the JSON answer, rejects with a ProblemError. */
export async function call(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await problemOf(response);
  if (response.status === 204) return null;
  return response.json();
}

/** Downloads `path` with the key and saves it as `name` (the key never enters a URL). */
export async function download(path, name) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw await problemOf(response);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/**
 * Uploads a file to `path` (POST, the raw bytes), calling `onProgress(fraction)` as
 * it goes; resolves to the created record, rejects with a ProblemError.
 */
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders({ "Content-Type": "application/octet-stream" }))) {
      xhr.setRequestHeader(name, value);
    }
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = { title: xhr.statusText };
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ProblemError(xhr.status, body));
    });
    xhr.addEventListener("error", () => reject(new ProblemError(0, { detail: "the upload could not reach the server" })));
    xhr.send(file);
  });
}

/**
 * Follows a job's event stream (Server-Sent Events read through fetch, so that the
 * key goes in a header), calling `onEvent(kind, data)` for each event. It resumes
 * after a dropped connection from the last event id, and stops when `signal` aborts
 * or the stream ends with the job.
 */
export async function followEvents(path, onEvent, signal) {
  let lastId = null;
  let ended = false;
  while (!signal.aborted && !ended) {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    let response;
    try {
      response = await fetch(path, { headers, signal });
    } catch {
      if (signal.aborted) return;
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    if (!response.ok) throw await problemOf(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let kind = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("id:")) lastId = line.slice(3).trim();
            else if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length === 0) continue;
          const parsed = JSON.parse(data.join("\n"));
          if (onEvent(kind, parsed) === false) ended = true;
        }
      }
    } catch {
      if (signal.aborted) return;
    }
    if (!ended) await new Promise((r) => setTimeout(r, 500));
  }
}
