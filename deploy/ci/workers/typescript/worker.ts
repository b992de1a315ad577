/**
 * A Temporal worker (TypeScript SDK, @temporalio/worker) that polls through flowgate with a
 * credential that flowgate minted, and keeps it fresh.
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
 * The credential's scope (namespace:payments role:worker task_queue:deploys) must be permitted
 * by a Cedar policy on Temporal::Action::"IssueCredential" (see deploy/ci/README.md).
 *
 * Node 18+ (global fetch).
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { NativeConnection, Worker } from '@temporalio/worker';
// Your activities; the workflows are bundled from ./workflows.
import * as activities from './activities';

const GATEWAY_URL = process.env.FLOWGATE_URL ?? 'https://flowgate.example.com';
const TEMPORAL_ADDRESS = process.env.TEMPORAL_ADDRESS ?? 'flowgate.example.com:7233';
const NAMESPACE = 'payments';
const TASK_QUEUE = 'deploys';
const SCOPE = `namespace:${NAMESPACE} role:worker task_queue:${TASK_QUEUE}`;

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

/** flowgate's token endpoint, from its OIDC discovery document. */
async function tokenEndpoint(): Promise<string> {
  const response = await fetch(`${GATEWAY_URL}/.well-known/openid-configuration`, {
    signal: AbortSignal.timeout(10_000),
  });
  if (!response.ok) throw new Error(`discovery: HTTP ${response.status}`);
  const doc = (await response.json()) as { token_endpoint: string };
  return doc.token_endpoint;
}

/**
 * RFC 8693 token exchange: a subject token (a CI/workload OIDC token, or a still-valid flowgate
 * credential) for a fresh flowgate credential with SCOPE.
 */
async function exchange(endpoint: string, subjectToken: string): Promise<Credential> {
  const sent = Date.now();
  let response: Response;
  try {
    response = await fetch(endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: new URLSearchParams({
        grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
        subject_token: subjectToken,
        subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
        scope: SCOPE,
      }),
      signal: AbortSignal.timeout(10_000),
    });
  } catch (err) {
    throw new ExchangeError(`token endpoint unreachable: ${err}`);
  }
  const body = (await response.json().catch(() => ({}))) as {
    access_token?: string;
    expires_in?: number;
    token_type?: string;
    error?: string;
    error_description?: string;
  };
  if (!response.ok) {
    throw new ExchangeError(
      `token exchange refused (HTTP ${response.status}): ${body.error}: ${body.error_description ?? ''}`,
      body.error,
    );
  }
  if (!body.access_token || !body.expires_in || body.token_type?.toLowerCase() !== 'bearer') {
    throw new ExchangeError('token endpoint: unexpected response');
  }
  // Counted from when the request was sent: never later than the server's clock.
  return { token: body.access_token, expiresAt: sent + body.expires_in * 1000 };
}

/** The token the worker starts from: a CI OIDC token or a projected SA token (file). */
function initialSubjectToken(): string {
  const path = process.env.FLOWGATE_SUBJECT_TOKEN_FILE;
  if (path) return readFileSync(path, 'ascii').trim();
  const token = process.env.CI_OIDC_TOKEN;
  if (!token) throw new Error('set CI_OIDC_TOKEN, FLOWGATE_SUBJECT_TOKEN_FILE or FLOWGATE_SIDECAR');
  delete process.env.CI_OIDC_TOKEN; // single-use: keep it out of child processes
  return token;
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
          credential = await exchange(endpoint, credential.token);
          break;
        } catch (err) {
          let failure = err;
          if (
            err instanceof ExchangeError &&
            err.oauthError === 'invalid_grant' &&
            process.env.FLOWGATE_SUBJECT_TOKEN_FILE
          ) {
            // Start over from the projected token file (the kubelet rotates it).
            try {
              credential = await exchange(endpoint, initialSubjectToken());
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

async function run(): Promise<void> {
  const sidecar = process.env.FLOWGATE_SIDECAR;
  let connection: NativeConnection;
  let refresh: ((signal: AbortSignal) => Promise<void>) | undefined;

  if (sidecar) {
    // The sidecar adds the credential and talks TLS to the gateway; the local hop is
    // plaintext h2c on loopback.
    connection = await NativeConnection.connect({ address: sidecar });
  } else {
    const endpoint = await tokenEndpoint();
    const credential = await exchange(endpoint, initialSubjectToken());
    const direct = await NativeConnection.connect({
      address: TEMPORAL_ADDRESS,
      tls: true,
      apiKey: credential.token, // sent as "authorization: Bearer <credential>"
    });
    connection = direct;
    refresh = (signal) => keepFresh(direct, endpoint, credential, signal);
  }

  try {
    const worker = await Worker.create({
      connection,
      namespace: NAMESPACE,
      taskQueue: TASK_QUEUE,
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
      console.error(`stopping: ${err}`);
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

run().catch((err) => {
  console.error(err);
  process.exit(1);
});
