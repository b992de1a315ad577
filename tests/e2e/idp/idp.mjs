#!/usr/bin/env node
// Test-only OpenID provider for flowgate's `flowgate login` tests.
//
// Built on panva's `oidc-provider` (OpenID Certified). Everything protocol-related
// (discovery, /auth, /token, /device/auth, /device, /token/revocation, PKCE, JWT
// access tokens, refresh-token rotation) is oidc-provider's own code. This file only
// supplies configuration, an account store, an in-memory adapter, and a browser-free
// interaction UI (JSON) plus optional /test/* helper endpoints.
//
// Usage:  node idp.mjs [PORT]        (PORT 0 or absent = pick a free port)
// Prints exactly one JSON line on stdout once it is listening, e.g.
//   {"ready":true,"issuer":"http://127.0.0.1:41234",...}
// Diagnostics go to stderr. See README.md for env vars and request sequences.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';

// ---------------------------------------------------------------- configuration

function envInt(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number.parseInt(v, 10);
  if (!Number.isFinite(n) || n < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
  }
  return n;
}

const HOST = '127.0.0.1';
const PORT = Number.parseInt(process.argv[2] ?? process.env.IDP_PORT ?? '0', 10);
const CLIENT_ID = process.env.IDP_CLIENT_ID || 'flowgate-cli';
const AUDIENCE = process.env.IDP_AUDIENCE || 'api://temporal';
const RS_SCOPE = process.env.IDP_RESOURCE_SCOPE ?? 'temporal';
const AT_ALG = process.env.IDP_ACCESS_TOKEN_ALG || 'ES256';
const AT_TTL = envInt('IDP_ACCESS_TOKEN_TTL', 300);
const RT_TTL = envInt('IDP_REFRESH_TOKEN_TTL', 24 * 60 * 60);
const DEVICE_TTL = envInt('IDP_DEVICE_TTL', 600);
// Unset/empty: stock oidc-provider behaviour (no `interval` in the device
// authorization response, so clients use RFC 8628's default of 5 s, and no
// slow_down). Set to N: `interval: N` is added to the response and a poll that
// arrives less than N seconds after the previous poll of the same device_code
// (while still pending) gets `slow_down` instead of `authorization_pending`.
const DEVICE_INTERVAL = envInt('IDP_DEVICE_INTERVAL', undefined);
const REDIRECT_URIS = (process.env.IDP_REDIRECT_URIS || 'http://127.0.0.1/callback,http://[::1]/callback')
  .split(',').map((s) => s.trim()).filter(Boolean);
// Optional second client for a server-side web app (Temporal's UI server): confidential
// (client secret, client_secret_basic), authorization code + refresh token, no PKCE (the UI
// server sends no code_challenge). Registered only when IDP_UI_CLIENT_ID is set.
const UI_CLIENT_ID = process.env.IDP_UI_CLIENT_ID || '';
const UI_CLIENT_SECRET = process.env.IDP_UI_CLIENT_SECRET || '';
const UI_REDIRECT_URIS = (process.env.IDP_UI_REDIRECT_URIS || '')
  .split(',').map((s) => s.trim()).filter(Boolean);
const TEST_ENDPOINTS = process.env.IDP_TEST_ENDPOINTS !== '0';
const LOG = process.env.IDP_LOG === '1';
// How long expired records are kept in memory (so an expired device_code keeps
// answering `expired_token` instead of `invalid_grant` "not found").
const RETAIN_EXPIRED_S = envInt('IDP_RETAIN_EXPIRED', 15 * 60);

const DEFAULT_ACCOUNTS = {
  alice: { email: 'alice@example.com', name: 'Alice', groups: ['deployers'] },
  bob: { email: 'bob@example.com', name: 'Bob', groups: [] },
};
const ACCOUNTS = {
  ...DEFAULT_ACCOUNTS,
  ...(process.env.IDP_ACCOUNTS ? JSON.parse(process.env.IDP_ACCOUNTS) : {}),
};

const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

function log(...args) {
  if (LOG) console.error('[idp]', ...args);
}

// ---------------------------------------------------------------- signing keys

function loadOrGenerateJwks() {
  if (process.env.IDP_JWKS_FILE) {
    return JSON.parse(fs.readFileSync(process.env.IDP_JWKS_FILE, 'utf8'));
  }
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  return {
    keys: [
      { ...ec, kid: `es256-${crypto.randomBytes(4).toString('hex')}`, use: 'sig', alg: 'ES256' },
      { ...rsa, kid: `rs256-${crypto.randomBytes(4).toString('hex')}`, use: 'sig', alg: 'RS256' },
    ],
  };
}

// ---------------------------------------------------------------- storage adapter
// A plain Map-based adapter (the bundled memory adapter is an LRU capped at 1000
// entries and drops records clockTolerance seconds after expiry). oidc-provider
// checks `exp` itself, so keeping expired records around a while is harmless.

const store = new Map(); // "Model:id" -> { payload, dropAt }
const grantIndex = new Map(); // grantId -> Set("Model:id")
const userCodeIndex = new Map(); // userCode -> id (DeviceCode)
const sessionUidIndex = new Map(); // uid -> id (Session)
const GRANTABLE = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'PreAuthorizedCode',
]);

class MapAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const dropAt = typeof expiresIn === 'number'
      ? Date.now() + (expiresIn + RETAIN_EXPIRED_S) * 1000
      : Infinity;
    store.set(key, { payload: structuredClone(payload), dropAt });
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
    if (payload.userCode) userCodeIndex.set(payload.userCode, id);
    if (this.model === 'Session' && payload.uid) sessionUidIndex.set(payload.uid, id);
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry) return undefined;
    if (entry.dropAt <= Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return structuredClone(entry.payload);
  }

  async findByUserCode(userCode) {
    const id = userCodeIndex.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUid(uid) {
    const id = sessionUidIndex.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantIndex.get(grantId) ?? []) store.delete(key);
    grantIndex.delete(grantId);
  }
}

setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of store) if (entry.dropAt <= now) store.delete(key);
}, 60_000).unref();

// ---------------------------------------------------------------- accounts

function findAccount(_ctx, id) {
  const acct = ACCOUNTS[id];
  if (!acct) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: acct.email,
        email_verified: true,
        name: acct.name ?? id,
        groups: [...(acct.groups ?? [])],
      };
    },
  };
}

// ---------------------------------------------------------------- small helpers

function htmlEscape(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Length', Buffer.byteLength(data));
  res.end(data);
}

function sendHtml(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(html);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  const type = (req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
  if (type === 'application/json') return text ? JSON.parse(text) : {};
  return Object.fromEntries(new URLSearchParams(text));
}

function wantsHtml(req) {
  const accept = req.headers.accept || '';
  return accept.includes('text/html');
}

const pageStyle = 'body{font-family:sans-serif;max-width:32em;margin:2em auto}';

// ---------------------------------------------------------------- provider

const jwks = loadOrGenerateJwks();
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];
const lastDevicePoll = new Map(); // device_code -> ms of previous token request

let provider; // set once the server is listening (the issuer needs the port)

function buildProvider(issuer) {
  const configuration = {
    adapter: MapAdapter,
    jwks,
    cookies: { keys: cookieKeys },
    findAccount,
    clients: [{
      client_id: CLIENT_ID,
      client_name: 'flowgate CLI',
      application_type: 'native', // enables RFC 8252 7.3 "any port" loopback matching
      token_endpoint_auth_method: 'none', // public client
      grant_types: ['authorization_code', 'refresh_token', DEVICE_GRANT],
      response_types: ['code'],
      redirect_uris: REDIRECT_URIS,
    }, ...(UI_CLIENT_ID ? [{
      client_id: UI_CLIENT_ID,
      client_secret: UI_CLIENT_SECRET,
      client_name: 'Temporal Web UI',
      application_type: 'web',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: UI_REDIRECT_URIS,
    }] : [])],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access'],
    responseTypes: ['code'],
    // S256 is the only method oidc-provider offers. The UI server's code flow has no PKCE.
    pkce: { required: (_ctx, client) => !(UI_CLIENT_ID && client.clientId === UI_CLIENT_ID) },
    clientBasedCORS: () => false,
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      deviceFlow: {
        enabled: true,
        async userCodeInputSource(ctx, form, _out, err) {
          const errName = err ? (err.name || 'Error') : '';
          ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Device sign-in</title>
<style>${pageStyle}</style></head><body data-error="${htmlEscape(errName)}">
<h1>Device sign-in</h1>
${err ? `<p id="error">${htmlEscape(errName)}: ${htmlEscape(err.message || '')}</p>` : '<p>Enter the code displayed on your device</p>'}
${form}
<button type="submit" form="op.deviceInputForm">Continue</button>
</body></html>`;
        },
        async userCodeConfirmSource(ctx, form, client, _deviceInfo, userCode) {
          ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Confirm device</title>
<style>${pageStyle}</style></head><body>
<h1>Confirm device</h1>
<p><strong>${htmlEscape(client.clientName || client.clientId)}</strong> shows code <code>${htmlEscape(userCode)}</code></p>
${form}
<button autofocus type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button>
</body></html>`;
        },
        async successSource(ctx) {
          ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Sign-in success</title>
<style>${pageStyle}</style></head><body data-result="success">
<h1>Sign-in success</h1><p>${htmlEscape(ctx.oidc.client.clientName || '')} is now signed in. You can close this page.</p>
</body></html>`;
        },
      },
      resourceIndicators: {
        enabled: true,
        // No `resource` parameter -> the Temporal API audience.
        defaultResource: (_ctx, _client, oneOf) => oneOf ?? AUDIENCE,
        // Token/refresh requests without `resource` get the granted audience
        // (otherwise openid requests fall back to an opaque userinfo-only token).
        useGrantedResource: () => true,
        getResourceServerInfo(_ctx, resourceIndicator) {
          if (resourceIndicator !== AUDIENCE) throw new errors.InvalidTarget();
          return {
            scope: RS_SCOPE,
            audience: AUDIENCE,
            accessTokenTTL: AT_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: AT_ALG } },
          };
        },
      },
    },
    // Refresh tokens for every client allowed to use the refresh_token grant,
    // whether or not offline_access was requested (oidc-provider drops
    // offline_access from authorization requests lacking prompt=consent).
    issueRefreshToken: (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Tokens don't die with the (cookie) browser session.
    expiresWithSession: () => false,
    // email + groups in every access token (the JWT gets sub/aud/iss/exp/... itself).
    async extraTokenClaims(_ctx, token) {
      if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
      const acct = ACCOUNTS[token.accountId];
      if (!acct) return undefined;
      return { email: acct.email, groups: [...(acct.groups ?? [])] };
    },
    interactions: {
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    async renderError(ctx, out) {
      ctx.type = 'json';
      ctx.body = out;
    },
    ttl: {
      AccessToken: AT_TTL,
      AuthorizationCode: 60,
      DeviceCode: DEVICE_TTL,
      IdToken: 3600,
      RefreshToken: RT_TTL,
      Interaction: 3600,
      Session: 24 * 60 * 60,
      Grant: 14 * 24 * 60 * 60,
    },
  };

  const p = new Provider(issuer, configuration);

  // RFC 8628 `interval` / `slow_down`, only when IDP_DEVICE_INTERVAL is set.
  p.use(async (ctx, next) => {
    await next();
    if (DEVICE_INTERVAL === undefined) return;
    if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body?.device_code) {
      ctx.body.interval = DEVICE_INTERVAL;
    } else if (ctx.path === '/token' && ctx.oidc?.params?.grant_type === DEVICE_GRANT) {
      const dc = ctx.oidc.params.device_code;
      const now = Date.now();
      const prev = lastDevicePoll.get(dc);
      lastDevicePoll.set(dc, now);
      if (ctx.body?.error === 'authorization_pending' && prev !== undefined
          && now - prev < DEVICE_INTERVAL * 1000) {
        ctx.body = {
          error: 'slow_down',
          error_description: `polled ${now - prev} ms after the previous request; interval is ${DEVICE_INTERVAL} s`,
        };
      }
    }
  });

  p.on('server_error', (_ctx, err) => console.error('[idp] server_error', err));
  if (LOG) {
    for (const ev of ['grant.error', 'authorization.error', 'grant.success', 'revocation.error',
      'device_authorization.error', 'code_verification.error', 'grant.revoked']) {
      p.on(ev, (...args) => log(ev, args.find((a) => a instanceof Error)?.message ?? ''));
    }
  }
  return p;
}

// ---------------------------------------------------------------- interaction UI
// GET  /interaction/:uid           -> JSON describing the prompt (HTML form if Accept: text/html)
// POST /interaction/:uid           -> account=<id>&decision=approve|deny (form or JSON)
//                                     303 back to the provider (Location: /auth/:uid or /device/resume/...)
// POST /interaction/:uid/abort     -> same as decision=deny

async function handleInteraction(req, res, pathname) {
  const m = /^\/interaction\/([^/]+)(\/abort)?\/?$/.exec(pathname);
  if (!m) return sendJson(res, 404, { error: 'not_found' });
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return sendJson(res, 400, { error: 'invalid_request', error_description: `${err.name}: ${err.error_description || err.message}` });
  }
  const { uid, prompt, params, session } = details;
  if (uid !== m[1]) {
    return sendJson(res, 400, { error: 'invalid_request', error_description: 'interaction cookie does not match the uid in the path' });
  }

  if (req.method === 'GET' && !m[2]) {
    const info = {
      uid,
      prompt: prompt.name,
      reasons: prompt.reasons,
      details: prompt.details,
      client_id: params.client_id,
      scope: params.scope,
      session_account: session?.accountId ?? null,
      accounts: Object.keys(ACCOUNTS),
      submit: { method: 'POST', url: `/interaction/${uid}`, fields: { account: 'login prompt only', decision: 'approve|deny' } },
    };
    if (!wantsHtml(req)) return sendJson(res, 200, info);
    const accountField = prompt.name === 'login'
      ? `<label>Account <select name="account">${Object.keys(ACCOUNTS).map((a) => `<option>${htmlEscape(a)}</option>`).join('')}</select></label>`
      : `<p>Signed in as <b>${htmlEscape(session?.accountId ?? '')}</b>. Allow <b>${htmlEscape(params.client_id)}</b> scope <code>${htmlEscape(params.scope ?? '')}</code>?</p>`;
    return sendHtml(res, 200, `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${htmlEscape(prompt.name)}</title>
<style>${pageStyle}</style></head><body><h1>${prompt.name === 'login' ? 'Sign in' : 'Consent'}</h1>
<form method="post" action="/interaction/${htmlEscape(uid)}">${accountField}
<button name="decision" value="approve">Approve</button> <button name="decision" value="deny">Deny</button></form>
</body></html>`);
  }

  if (req.method !== 'POST') return sendJson(res, 405, { error: 'method_not_allowed' });

  let body;
  try {
    body = await readBody(req);
  } catch (err) {
    return sendJson(res, 400, { error: 'invalid_request', error_description: err.message });
  }
  const decision = m[2] ? 'deny' : (body.decision || 'approve');
  log('interaction', uid, prompt.name, decision, body.account ?? '');

  if (decision === 'deny') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User denied the authorization request',
    }, { mergeWithLastSubmission: false });
  }
  if (decision !== 'approve') {
    return sendJson(res, 400, { error: 'invalid_request', error_description: 'decision must be approve or deny' });
  }

  switch (prompt.name) {
    case 'login': {
      const account = body.account;
      if (!account || !ACCOUNTS[account]) {
        return sendJson(res, 400, { error: 'invalid_request', error_description: `unknown account ${JSON.stringify(account)}; known: ${Object.keys(ACCOUNTS).join(', ')}` });
      }
      return provider.interactionFinished(req, res, {
        login: { accountId: account, amr: ['pwd'] },
      }, { mergeWithLastSubmission: false });
    }
    case 'consent': {
      const { accountId } = session;
      let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
      grant ??= new provider.Grant({ accountId, clientId: params.client_id });
      const d = prompt.details;
      if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
      if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
      if (d.missingResourceScopes) {
        for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
          grant.addResourceScope(indicator, scopes.join(' '));
        }
      }
      const grantId = await grant.save();
      const consent = details.grantId ? {} : { grantId };
      return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
    }
    default:
      return sendJson(res, 400, { error: 'invalid_request', error_description: `unsupported prompt ${prompt.name}` });
  }
}

// ---------------------------------------------------------------- test helpers
// A minimal in-process "browser" (cookie jar + manual redirects) that drives the
// provider's own user-facing endpoints exactly as the documented HTTP sequence does.

class Browser {
  constructor(issuer) { this.issuer = new URL(issuer); this.jar = new Map(); }

  cookieHeader() {
    return [...this.jar].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  storeCookies(res) {
    for (const sc of res.headers.getSetCookie()) {
      const [pair, ...attrs] = sc.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expired = attrs.some((a) => {
        const [k, v] = a.trim().split('=');
        if (k.toLowerCase() === 'max-age') return Number(v) <= 0;
        if (k.toLowerCase() === 'expires') return Date.parse(v) <= Date.now();
        return false;
      });
      if (expired || value === '') this.jar.delete(name); else this.jar.set(name, value);
    }
  }

  async request(url, { method = 'GET', form } = {}) {
    const headers = { accept: 'application/json' };
    if (this.jar.size) headers.cookie = this.cookieHeader();
    let body;
    if (form) {
      body = new URLSearchParams(form).toString();
      headers['content-type'] = 'application/x-www-form-urlencoded';
    }
    const res = await fetch(url, { method, headers, body, redirect: 'manual' });
    this.storeCookies(res);
    return res;
  }

  // Follows redirects inside the IdP; answers every /interaction/:uid with a POST
  // of {account, decision}. Stops at a non-redirect response or at a redirect
  // leaving the IdP (i.e. to the client's redirect_uri).
  async drive(res, url, { account, decision }) {
    for (let hops = 0; hops < 20; hops += 1) {
      const location = res.headers.get('location');
      if (!(res.status >= 300 && res.status < 400 && location)) {
        return { status: res.status, url, body: await res.text() };
      }
      await res.arrayBuffer();
      const next = new URL(location, url);
      if (next.origin !== this.issuer.origin) return { redirect: next.href };
      url = next.href;
      if (next.pathname.startsWith('/interaction/')) {
        res = await this.request(url, { method: 'POST', form: { account: account ?? '', decision } });
      } else {
        res = await this.request(url);
      }
    }
    throw new Error('too many redirects');
  }
}

function isLoopback(u) {
  return u.protocol === 'http:' && ['127.0.0.1', '[::1]', 'localhost'].includes(u.hostname);
}

// POST /test/approve {user_code, account, decision}
async function testApprove(body, issuer) {
  const { user_code: userCode, account, decision = 'approve' } = body;
  if (!userCode) return [400, { error: 'invalid_request', error_description: 'user_code is required' }];
  if (!['approve', 'deny'].includes(decision)) return [400, { error: 'invalid_request', error_description: 'decision must be approve or deny' }];
  if (decision === 'approve' && !ACCOUNTS[account]) return [400, { error: 'invalid_request', error_description: `unknown account ${JSON.stringify(account)}` }];
  const normalized = userCode.replace(/[a-z]/g, (c) => c.toUpperCase()).replace(/\W/g, '');
  const before = await provider.DeviceCode.findByUserCode(normalized, { ignoreExpiration: true });
  if (!before) return [404, { error: 'not_found', error_description: 'unknown user_code' }];
  if (before.isExpired) return [410, { error: 'expired', error_description: 'user_code has expired' }];
  if (before.error || before.accountId || before.inFlight) return [409, { error: 'already_used', error_description: 'user_code was already approved or denied' }];

  const b = new Browser(issuer);
  const verification = `${issuer}/device`;
  const page = await b.request(verification);
  const html = await page.text();
  const xsrf = /name="xsrf" value="([^"]+)"/.exec(html)?.[1];
  if (!xsrf) return [500, { error: 'server_error', error_description: 'no xsrf token on /device page' }];
  const res = await b.request(verification, { method: 'POST', form: { xsrf, user_code: userCode, confirm: 'yes' } });
  const out = await b.drive(res, verification, { account, decision });

  const after = await provider.DeviceCode.findByUserCode(normalized, { ignoreExpiration: true });
  if (after?.accountId) return [200, { result: 'approved', account: after.accountId, user_code: userCode }];
  if (after?.error) {
    return [200, {
      result: 'denied', error: after.error, error_description: after.errorDescription, user_code: userCode,
    }];
  }
  return [500, { error: 'server_error', error_description: 'device flow did not complete', last_status: out.status, last_body: out.body?.slice(0, 500) }];
}

// POST /test/authorize {url, account, decision, follow_callback}
async function testAuthorize(body, issuer) {
  const { url, account, decision = 'approve', follow_callback: follow = true } = body;
  if (!url) return [400, { error: 'invalid_request', error_description: 'url (the full authorization request URL) is required' }];
  const start = new URL(url);
  if (start.origin !== new URL(issuer).origin) return [400, { error: 'invalid_request', error_description: 'url must point at this issuer' }];
  const b = new Browser(issuer);
  const res = await b.request(start.href);
  const out = await b.drive(res, start.href, { account, decision });
  if (!out.redirect) {
    let parsed;
    try { parsed = JSON.parse(out.body); } catch { parsed = { body: out.body.slice(0, 500) }; }
    return [400, { error: 'no_redirect', status: out.status, response: parsed }];
  }
  const loc = new URL(out.redirect);
  const result = { location: loc.href, params: Object.fromEntries(loc.searchParams) };
  if (follow && isLoopback(loc)) {
    try {
      const cb = await fetch(loc.href, { redirect: 'manual', signal: AbortSignal.timeout(10_000) });
      result.callback_status = cb.status;
      await cb.arrayBuffer();
    } catch (err) {
      result.callback_error = String(err.cause?.code || err.message);
    }
  }
  return [200, result];
}

async function handleTest(req, res, pathname, issuer) {
  if (req.method !== 'POST') return sendJson(res, 405, { error: 'method_not_allowed' });
  let body;
  try {
    body = await readBody(req);
  } catch (err) {
    return sendJson(res, 400, { error: 'invalid_request', error_description: err.message });
  }
  let out;
  if (pathname === '/test/approve') out = await testApprove(body, issuer);
  else if (pathname === '/test/authorize') out = await testAuthorize(body, issuer);
  else out = [404, { error: 'not_found' }];
  log(pathname, JSON.stringify(body), '->', out[0]);
  return sendJson(res, out[0], out[1]);
}

// ---------------------------------------------------------------- server

let issuer;
let providerCallback;

const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, 'http://placeholder');
  if (LOG) log(req.method, req.url);
  const fail = (err) => {
    console.error('[idp] handler error', err);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: String(err.message) });
    else res.destroy();
  };
  if (pathname.startsWith('/interaction/')) {
    handleInteraction(req, res, pathname).catch(fail);
  } else if (TEST_ENDPOINTS && pathname.startsWith('/test/')) {
    handleTest(req, res, pathname, issuer).catch(fail);
  } else {
    providerCallback(req, res);
  }
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  issuer = `http://${HOST}:${port}`;
  provider = buildProvider(issuer);
  providerCallback = provider.callback();
  const ready = {
    ready: true,
    issuer,
    port,
    client_id: CLIENT_ID,
    ui_client_id: UI_CLIENT_ID || null,
    ui_redirect_uris: UI_CLIENT_ID ? UI_REDIRECT_URIS : null,
    audience: AUDIENCE,
    resource_scope: RS_SCOPE || null,
    redirect_uris: REDIRECT_URIS,
    accounts: Object.keys(ACCOUNTS),
    discovery: `${issuer}/.well-known/openid-configuration`,
    authorization_endpoint: `${issuer}/auth`,
    token_endpoint: `${issuer}/token`,
    device_authorization_endpoint: `${issuer}/device/auth`,
    verification_uri: `${issuer}/device`,
    revocation_endpoint: `${issuer}/token/revocation`,
    jwks_uri: `${issuer}/jwks`,
    device_ttl: DEVICE_TTL,
    device_interval: DEVICE_INTERVAL ?? null,
    access_token_ttl: AT_TTL,
    test_endpoints: TEST_ENDPOINTS ? { approve: `${issuer}/test/approve`, authorize: `${issuer}/test/authorize` } : null,
    pid: process.pid,
  };
  process.stdout.write(`${JSON.stringify(ready)}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (process.env.IDP_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
