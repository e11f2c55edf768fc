// The console's calls to ternd's JSON API (/api/v1, server/web_api.h). The
// bearer token lives in sessionStorage and is sent as Authorization: Bearer;
// a 401 raises AuthError so the page can ask for a token.
const TOKEN_KEY = 'tern.token';

export class AuthError extends Error {}

export function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }
export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
}

function headers() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function fail(response) {
  let message = `${response.status} ${response.statusText}`;
  try { message = (await response.json()).error.message || message; } catch (e) { /* not JSON */ }
  if (response.status === 401) throw new AuthError(message);
  throw new Error(message);
}

export async function get(path) {
  const response = await fetch(`api/v1/${path}`, { headers: headers(), cache: 'no-store' });
  if (!response.ok) await fail(response);
  return response.json();
}

// Downloads a job's artifact with the token (a plain link could not send it).
export async function download(jobId) {
  const response = await fetch(`api/v1/jobs/${encodeURIComponent(jobId)}/artifact`,
                               { headers: headers() });
  if (!response.ok) await fail(response);
  const name = /filename="([^"]+)"/.exec(response.headers.get('Content-Disposition') || '');
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = name ? name[1] : `job-${jobId}.tern`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
