// The public HTTP API, as the signed-in principal. The credential lives in
// sessionStorage: it goes with the tab, and only ever to this origin.
const STORE = "keel.credential";

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const credential = () => sessionStorage.getItem(STORE);
export const signIn = (value) => sessionStorage.setItem(STORE, value.trim());
export const signOut = () => sessionStorage.removeItem(STORE);

function headers(json) {
  const h = { Authorization: `Bearer ${credential() || ""}` };
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code;
  try {
    const body = await response.json();
    message = body.error?.message || message;
    code = body.error?.code;
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, message, code);
}

/** One call; the parsed JSON body, or an ApiError with the server's message. */
export async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** A server-sent event stream: calls onEvent(name, data) for each event. */
export async function stream(path, body, onEvent) {
  const response = await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

/** Who is signed in: tenant, principal, roles. */
export const me = () => call("GET", "/v1/me");
