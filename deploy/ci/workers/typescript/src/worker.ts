/**
 * A Temporal worker (TypeScript SDK, @temporalio/worker) that polls through flowgate with a
 * credential that flowgate minted, and keeps it fresh. It serves DeployWorkflow (workflows.ts)
 * and its activity runDeploy (activities.ts), which the pipelines in deploy/ci start.
 *
 *     npm ci && npm run build && node lib/worker.js
 *
 * Two ways to run it:
 *
 * - Through a local `flowgate sidecar` (the simpler one). The sidecar obtains the credential,
 *   refreshes it and adds it to every call; the worker talks plaintext to 127.0.0.1 and never
 *   sees a token:
 *
 *       flowgate sidecar --config sidecar.toml &
 *       FLOWGATE_SIDECAR=127.0.0.1:7233 node lib/worker.js
 *
 * - Directly, over TLS to the gateway. The worker exchanges a subject token once (a CI OIDC
 *   token from $CI_OIDC_TOKEN, or a Kubernetes projected service-account token from
 *   $FLOWGATE_SUBJECT_TOKEN_FILE) and then re-exchanges its own credential at about 2/3 of its
 *   lifetime, handing the new one to `connection.setApiKey(...)`. The worker uses that
 *   connection, so its polls carry the new credential from the next call on. (Do not also put
 *   an `authorization` entry in `metadata`: it would take precedence over the API key.)
 *
 *       CI_OIDC_TOKEN=... FLOWGATE_URL=https://flowgate.example.com \
 *         TEMPORAL_ADDRESS=flowgate.example.com:7233 node lib/worker.js
 *
 * Other settings: TEMPORAL_NAMESPACE (payments) and TEMPORAL_TASK_QUEUE (deploys) say what it
 * serves; FLOWGATE_SCOPE (namespace:<ns> role:worker task_queue:<queue>) is what it asks for,
 * and a Cedar policy on Temporal::Action::"IssueCredential" must permit it (see
 * deploy/ci/README.md); FLOWGATE_CA_FILE is a PEM bundle for a gateway whose certificate a
 * private CA signed (the system roots otherwise). Node's fetch, which does the exchange, reads
 * extra roots only from NODE_EXTRA_CA_CERTS when node starts: set that to the same file.
 *
 * The subject token goes to the gateway only. The token endpoint comes from the discovery
 * document at FLOWGATE_URL and must be on FLOWGATE_URL's https origin (scheme, host and port):
 * anything else stops the worker (exit 2). No redirect is followed, and a request to the
 * gateway is given up after 10 s or 256 KiB of response.
 *
 * Node 20.3 or later (the SDK's floor; global fetch).
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { NativeConnection, Worker } from '@temporalio/worker';
// The activities run in this process; the workflows are bundled from ./workflows.
import * as activities from './activities';

/** A setting that is missing or wrong: one line says what to set. */
class ConfigError extends Error {}

interface Settings {
  sidecar?: string; // FLOWGATE_SIDECAR: a local sidecar's plaintext address
  gateway: string; // FLOWGATE_URL: where the token endpoint is discovered
  address: string; // TEMPORAL_ADDRESS: the gateway's gRPC address
  namespace: string;
  taskQueue: string;
  scope: string;
  caFile?: string;
  ciToken?: string; // CI_OIDC_TOKEN, taken out of the environment
  tokenFile?: string; // FLOWGATE_SUBJECT_TOKEN_FILE
}

function env(name: string): string | undefined {
  const value = process.env[name]?.trim();
  return value ? value : undefined;
}

/** Reads the environment and says in one line what is missing, before anything goes over the network. */
function loadSettings(): Settings {
  const namespace = env('TEMPORAL_NAMESPACE') ?? 'payments';
  const taskQueue = env('TEMPORAL_TASK_QUEUE') ?? 'deploys';
  const settings: Settings = {
    sidecar: env('FLOWGATE_SIDECAR'),
    gateway: (env('FLOWGATE_URL') ?? '').replace(/\/+$/, ''),
    address: env('TEMPORAL_ADDRESS') ?? '',
    namespace,
    taskQueue,
    scope: env('FLOWGATE_SCOPE') ?? `namespace:${namespace} role:worker task_queue:${taskQueue}`,
    caFile: env('FLOWGATE_CA_FILE'),
    ciToken: env('CI_OIDC_TOKEN'),
    tokenFile: env('FLOWGATE_SUBJECT_TOKEN_FILE'),
  };
  delete process.env.CI_OIDC_TOKEN; // single-use: keep it out of child processes
  if (settings.sidecar) return settings;
  if (!settings.ciToken && !settings.tokenFile) {
    throw new ConfigError(
      'no credential source: set FLOWGATE_SIDECAR (a local flowgate sidecar, e.g. 127.0.0.1:7233), ' +
        'or CI_OIDC_TOKEN or FLOWGATE_SUBJECT_TOKEN_FILE (a token to exchange) with FLOWGATE_URL ' +
        '(the gateway, e.g. https://flowgate.example.com) and TEMPORAL_ADDRESS (its gRPC address, ' +
        `e.g. flowgate.example.com:7233); the credential asked for is \`${settings.scope}\` (FLOWGATE_SCOPE)`,
    );
  }
  const missing = [];
  if (!settings.gateway) missing.push('FLOWGATE_URL (the gateway, e.g. https://flowgate.example.com)');
  if (!settings.address) missing.push("TEMPORAL_ADDRESS (the gateway's gRPC address, e.g. flowgate.example.com:7233)");
  if (missing.length > 0) {
    throw new ConfigError(`set ${missing.join(' and ')} to exchange the subject token for \`${settings.scope}\``);
  }
  // The subject token and the credential are bearer tokens: never send them in the clear.
  if (!URL.canParse(settings.gateway) || new URL(settings.gateway).protocol !== 'https:') {
    throw new ConfigError(`FLOWGATE_URL must be an https:// URL, not "${settings.gateway}"`);
  }
  if (settings.caFile && !process.env.NODE_EXTRA_CA_CERTS) {
    throw new ConfigError(
      'FLOWGATE_CA_FILE is set but NODE_EXTRA_CA_CERTS is not: start node with NODE_EXTRA_CA_CERTS=' +
        `${settings.caFile} too, so that fetch (the token exchange) trusts that CA`,
    );
  }
  return settings;
}

function readSetting(name: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError(`cannot read ${name}: ${(err as Error).message}`);
  }
}

interface Credential {
  token: string;
  expiresAt: number; // Date.now() milliseconds
}

class ExchangeError extends Error {
  constructor(
    message: string,
    readonly oauthError?: string,
  ) {
    super(message);
  }
}

/** One request to the gateway, whole: connect, TLS, headers and body. */
const DEADLINE_MS = 10_000;
/** A discovery document or a token response is a few hundred bytes; a larger one is refused, not buffered. */
const MAX_RESPONSE = 256 * 1024;

/**
 * Sends one request and returns its status and JSON body (undefined when it is not JSON), for
 * an error status too. Never follows a redirect (fetch would re-send a 307's POST, subject token
 * and all, wherever the Location header points); reads at most MAX_RESPONSE bytes; the deadline
 * covers the body too. `unreachable` begins the message when there is no response at all.
 */
async function request(
  what: string,
  url: string,
  init: RequestInit,
  unreachable = `${what} unreachable`,
): Promise<{ status: number; body: unknown }> {
  const signal = AbortSignal.timeout(DEADLINE_MS);
  let response: Response;
  try {
    response = await fetch(url, { ...init, redirect: 'error', signal });
  } catch (err) {
    const why = describe(err);
    if (/redirect/i.test(why)) throw new ExchangeError(`${what}: answered with a redirect: redirects are not followed`);
    throw new ExchangeError(`${unreachable}: ${why}`);
  }
  const declared = Number(response.headers.get('content-length') ?? 0);
  const tooLarge = `${what}: HTTP ${response.status}, a response larger than ${MAX_RESPONSE / 1024} KiB`;
  if (declared > MAX_RESPONSE) {
    await response.body?.cancel().catch(() => {});
    throw new ExchangeError(tooLarge);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  // The deadline must end a body that trickles in too. An aborted fetch does not always reject
  // a read already waiting on the body (seen with Node 20's fetch under load), so each read
  // races the signal itself.
  const deadline = new Promise<never>((_, reject) => {
    const fail = () => reject(new Error('deadline'));
    if (signal.aborted) fail();
    else signal.addEventListener('abort', fail, { once: true });
  });
  deadline.catch(() => {});
  const reader = response.body?.getReader();
  try {
    for (;;) {
      if (!reader) break;
      const { done, value } = await Promise.race([reader.read(), deadline]);
      if (done) break;
      size += value.byteLength;
      if (size > MAX_RESPONSE) {
        await reader.cancel().catch(() => {});
        throw new ExchangeError(tooLarge);
      }
      chunks.push(value);
    }
  } catch (err) {
    await reader?.cancel().catch(() => {});
    if (err instanceof ExchangeError) throw err;
    const why = signal.aborted ? `no complete response within ${DEADLINE_MS / 1000} s` : describe(err);
    throw new ExchangeError(`${what}: HTTP ${response.status}, unreadable body: ${why}`);
  }
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    body = undefined;
  }
  return { status: response.status, body };
}

/** A discovered token endpoint is accepted only on the gateway's own https origin (scheme, host, port). */
function sameOrigin(gateway: string, endpoint: string): boolean {
  if (!URL.canParse(endpoint)) return false;
  const url = new URL(endpoint);
  return url.protocol === 'https:' && !url.username && !url.password && url.origin === new URL(gateway).origin;
}

/** flowgate's token endpoint, from its OIDC discovery document, and only on the gateway's own origin. */
async function tokenEndpoint(gateway: string): Promise<string> {
  const { status, body } = await request(
    `discovery at ${gateway}`,
    `${gateway}/.well-known/openid-configuration`,
    {},
    `gateway unreachable: ${gateway}`,
  );
  if (status !== 200) {
    throw new ExchangeError(`discovery at ${gateway}: HTTP ${status} (is [mint] configured on the gateway?)`);
  }
  const endpoint = (body as { token_endpoint?: unknown } | undefined)?.token_endpoint;
  if (!endpoint || typeof endpoint !== 'string') throw new ExchangeError(`discovery at ${gateway}: no token_endpoint`);
  // The subject token is for the gateway: a discovery document (or whoever answered in the
  // gateway's place) must not send it anywhere else, nor in the clear.
  if (!sameOrigin(gateway, endpoint)) {
    throw new ConfigError(
      `the discovery document at ${gateway} names token_endpoint "${endpoint}", which is not on FLOWGATE_URL's ` +
        'https origin (scheme, host and port): the subject token is sent to the gateway only',
    );
  }
  return endpoint;
}

/** An error's message with its cause (fetch says only "fetch failed"; the cause says why). */
function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = err.cause instanceof Error ? `: ${err.cause.message}` : '';
  return `${err.message}${cause}`;
}

/**
 * RFC 8693 token exchange: a subject token (a CI/workload OIDC token, or a still-valid flowgate
 * credential) for a fresh flowgate credential with `scope`.
 */
async function exchange(endpoint: string, scope: string, subjectToken: string): Promise<Credential> {
  const sent = Date.now();
  const { status, body: parsed } = await request('token endpoint', endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: new URLSearchParams({
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: subjectToken,
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      scope,
    }),
  });
  const body = (parsed && typeof parsed === 'object' ? parsed : {}) as {
    access_token?: unknown;
    expires_in?: unknown;
    token_type?: unknown;
    error?: unknown;
    error_description?: unknown;
  };
  if (status !== 200) {
    const error = typeof body.error === 'string' ? body.error : undefined;
    throw new ExchangeError(
      `token exchange refused (HTTP ${status}): ${error ?? '?'}: ${body.error_description ?? ''}`,
      error,
    );
  }
  const { access_token: token, expires_in: lifetime, token_type: type } = body;
  if (
    typeof token !== 'string' ||
    !token ||
    typeof lifetime !== 'number' ||
    !(lifetime > 0 && lifetime < 2 ** 31) ||
    typeof type !== 'string' ||
    type.toLowerCase() !== 'bearer'
  ) {
    throw new ExchangeError('token endpoint: unexpected response (no Bearer access_token with a positive expires_in)');
  }
  // Counted from when the request was sent: never later than the server's clock.
  return { token, expiresAt: sent + lifetime * 1000 };
}

/** The token the worker starts from: a projected SA token (re-read from its file, which the
 * kubelet rotates) or a CI OIDC token. */
function subjectToken(settings: Settings): string {
  if (settings.tokenFile) {
    const token = readSetting('FLOWGATE_SUBJECT_TOKEN_FILE', settings.tokenFile).toString('ascii').trim();
    if (!token) throw new ConfigError(`FLOWGATE_SUBJECT_TOKEN_FILE ${settings.tokenFile} is empty`);
    return token;
  }
  return settings.ciToken ?? '';
}

/**
 * Re-exchanges the credential at about 2/3 of its remaining lifetime (with jitter) and hands
 * the new one to the connection. Retries with backoff while the credential is valid; rejects
 * once it has expired. Resolves when `signal` aborts. A chain of refreshes ends after the
 * gateway's `mint.max_session` (default 12 h) with `invalid_grant`: then only a new subject
 * token helps.
 */
async function keepFresh(
  connection: NativeConnection,
  settings: Settings,
  endpoint: string,
  credential: Credential,
  signal: AbortSignal,
): Promise<void> {
  try {
    for (;;) {
      const remaining = credential.expiresAt - Date.now();
      await sleep(Math.max(1000, remaining * (0.6 + 0.1 * Math.random())), undefined, { signal });
      let backoff = 1000;
      for (;;) {
        try {
          credential = await exchange(endpoint, settings.scope, credential.token);
          break;
        } catch (err) {
          let failure = err;
          if (err instanceof ExchangeError && err.oauthError === 'invalid_grant' && settings.tokenFile) {
            // Start over from the projected token file (the kubelet rotates it).
            try {
              credential = await exchange(endpoint, settings.scope, subjectToken(settings));
              break;
            } catch (again) {
              failure = again;
            }
          }
          const left = credential.expiresAt - Date.now();
          if (left <= 0) throw new Error(`flowgate credential expired: ${failure}`);
          console.warn(`credential refresh failed (${failure}); ${Math.round(left / 1000)} s of validity left`);
          await sleep(Math.min(backoff, left), undefined, { signal });
          backoff = Math.min(backoff * 2, 30_000);
        }
      }
      await connection.setApiKey(credential.token);
      console.info(`credential refreshed; valid for ${Math.round((credential.expiresAt - Date.now()) / 1000)} s`);
    }
  } catch (err) {
    if (signal.aborted) return;
    throw err;
  }
}

async function run(settings: Settings): Promise<void> {
  let connection: NativeConnection;
  let refresh: ((signal: AbortSignal) => Promise<void>) | undefined;

  if (settings.sidecar) {
    // The sidecar adds the credential and talks TLS to the gateway; the local hop is
    // plaintext h2c on loopback.
    connection = await connect({ address: settings.sidecar });
  } else {
    const ca = settings.caFile ? readSetting('FLOWGATE_CA_FILE', settings.caFile) : undefined;
    const subject = subjectToken(settings);
    const endpoint = await tokenEndpoint(settings.gateway);
    const credential = await exchange(endpoint, settings.scope, subject);
    const direct = await connect({
      address: settings.address,
      tls: ca ? { serverRootCACertificate: ca } : true,
      apiKey: credential.token, // sent as "authorization: Bearer <credential>"
    });
    connection = direct;
    refresh = (signal) => keepFresh(direct, settings, endpoint, credential, signal);
  }

  try {
    const worker = await Worker.create({
      connection,
      namespace: settings.namespace,
      taskQueue: settings.taskQueue,
      workflowsPath: require.resolve('./workflows'),
      activities,
    });
    if (!refresh) {
      await worker.run();
      return;
    }
    // Run until the worker stops (SIGINT/SIGTERM by default) or the credential can no longer
    // be refreshed; then stop the other one.
    const stopRefresh = new AbortController();
    const refreshing = refresh(stopRefresh.signal).catch((err) => {
      console.error(`worker: stopping: ${describe(err)}`);
      process.exitCode = 1; // a supervisor restarts the worker with a new subject token
      worker.shutdown();
    });
    try {
      await worker.run();
    } finally {
      stopRefresh.abort();
      await refreshing;
    }
  } finally {
    await connection.close();
  }
}

/** NativeConnection.connect, with an error that names the address. */
async function connect(options: Parameters<typeof NativeConnection.connect>[0]): Promise<NativeConnection> {
  try {
    return await NativeConnection.connect(options);
  } catch (err) {
    throw new Error(`cannot connect to ${options?.address}: ${describe(err)}`);
  }
}

// One line on stderr and a non-zero exit, not a stack: a supervisor's log shows what to fix.
try {
  const settings = loadSettings();
  run(settings).catch((err) => {
    console.error(`worker: ${describe(err)}`);
    process.exit(err instanceof ConfigError ? 2 : 1);
  });
} catch (err) {
  console.error(`worker: ${describe(err)}`);
  process.exit(2);
}
