// A local OpenID provider shaped like an Okta custom authorization server, for tests and the demo.
//
// Usage: node server.mjs CONFIG.json
// Prints "READY <port>" once listening on 127.0.0.1. The issuer is http://127.0.0.1:<port>/oauth2/default
// with Okta's routes (/v1/keys, /v1/token, /v1/device/authorize, /v1/introspect, /v1/revoke) and JWT
// access tokens carrying Okta's cid, uid, scp and groups claims. Like Okta (and unlike oidc-provider
// itself) /v1/introspect and /v1/revoke accept those JWT access tokens; that part is done here.
//
// CONFIG: { port, audience, scopes: [..], access_token_ttl, keys_max_age, accounts: {sub: {uid, groups}},
//           clients: [{client_id, token_endpoint_auth_method, jwks?, client_secret?, grant_types, scope, groups?}] }
//
// Test-only routes (outside the issuer path, loopback only):
//   POST /__test/rotate              new signing key first in the JWKS, old keys still published
//   POST /__test/ttl       {seconds} access token lifetime for tokens issued from now on
//   POST /__test/outage    {token, keys}  make those endpoints answer 503 while true
//   POST /__test/device/approve {user_code, account}  approve a device code as that account
//   GET  /__test/stats               request counts per route

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import { createLocalJWKSet, jwtVerify } from 'jose';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const PREFIX = '/oauth2/default';
const ROUTES = {
  jwks: '/v1/keys',
  token: '/v1/token',
  device_authorization: '/v1/device/authorize',
  code_verification: '/v1/device',
  introspection: '/v1/introspect',
  revocation: '/v1/revoke',
  authorization: '/v1/authorize',
  userinfo: '/v1/userinfo',
  end_session: '/v1/logout',
};

const ctx = {}; // the running provider, its request handler and issuer (replaced on key rotation)
const state = {
  ttl: config.access_token_ttl ?? 300,
  outage: { token: false, keys: false },
  stats: {},
  keys: [],
  issued: new Map(), // jti -> JWT access token record; oidc-provider keeps no state for JWT tokens
};

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' };
}

function clientGroups(clientId) {
  return config.clients.find((c) => c.client_id === clientId)?.groups ?? [];
}

function buildProvider(issuer) {
  const clients = config.clients.map(({ groups, ...metadata }) => ({
    redirect_uris: [], response_types: [], ...metadata,
  }));
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: state.keys },
    routes: ROUTES,
    scopes: ['openid', 'offline_access', ...config.scopes],
    findAccount: (ctx, sub) => (config.accounts[sub]
      ? { accountId: sub, claims: () => ({ sub }) } : undefined),
    ttl: {
      AccessToken: () => state.ttl,
      ClientCredentials: () => state.ttl,
      DeviceCode: 600,
      Grant: 3600,
      RefreshToken: 86400,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => config.audience,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: config.scopes.join(' '),
          audience: config.audience,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims: (ctx, token) => {
      const account = token.accountId ? config.accounts[token.accountId] : undefined;
      return {
        cid: token.clientId,
        uid: account?.uid,
        scp: (token.scope ?? '').split(' ').filter(Boolean),
        groups: account ? account.groups : clientGroups(token.clientId),
      };
    },
  });
  provider.on('server_error', (_, err) => console.error('server_error', err));
  const remember = (token) => {
    const iat = Math.floor(Date.now() / 1000);
    state.issued.set(token.jti, {
      jti: token.jti, clientId: token.clientId, accountId: token.accountId, scope: token.scope, aud: token.aud,
      iat, exp: iat + token.expiration, destroy: async () => state.issued.delete(token.jti),
    });
  };
  provider.on('access_token.issued', remember);
  provider.on('client_credentials.issued', remember);
  return provider;
}

async function approveDevice(provider, { user_code: userCode, account }) {
  const code = await provider.DeviceCode.findByUserCode(userCode.replace(/[^A-Za-z]/g, '').toUpperCase());
  if (!code || !config.accounts[account]) return { status: 404, body: { error: 'unknown user code or account' } };
  const requested = (code.params.scope ?? '').split(' ').filter(Boolean);
  const grant = new provider.Grant({ accountId: account, clientId: code.clientId });
  grant.addOIDCScope(requested.filter((s) => s === 'openid' || s === 'offline_access').join(' '));
  grant.addResourceScope(config.audience, requested.filter((s) => config.scopes.includes(s)).join(' '));
  const grantId = await grant.save();
  Object.assign(code, {
    accountId: account,
    grantId,
    authTime: Math.floor(Date.now() / 1000),
    scope: requested.join(' '),
    resource: config.audience,
  });
  await code.save();
  return { status: 200, body: { approved: true } };
}

function readBody(req) {
  return new Promise((resolve) => {
    let data = '';
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => resolve(data));
  });
}

async function readJson(req) {
  const data = await readBody(req);
  return data ? JSON.parse(data) : {};
}

function publicKeys() {
  return state.keys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub);
}

// The calling client, authenticated as Okta would: client_secret_basic, private_key_jwt, or a public client.
async function callingClient(req, form, endpoint) {
  const basic = /^Basic (.+)$/.exec(req.headers.authorization ?? '');
  if (basic) {
    const [id, secret] = Buffer.from(basic[1], 'base64').toString().split(':').map(decodeURIComponent);
    const client = config.clients.find((c) => c.client_id === id);
    return client?.client_secret && client.client_secret === secret ? client : undefined;
  }
  const client = config.clients.find((c) => c.client_id === form.get('client_id'));
  if (form.get('client_assertion') && client?.jwks) {
    try {
      await jwtVerify(form.get('client_assertion'), createLocalJWKSet(client.jwks), {
        issuer: client.client_id, subject: client.client_id, audience: [endpoint, ctx.issuer],
      });
      return client;
    } catch { return undefined; }
  }
  return client?.token_endpoint_auth_method === 'none' ? client : undefined;
}

async function findToken(provider, value) {
  let token;
  if (value.split('.').length === 3) {
    try {
      const { payload } = await jwtVerify(value, createLocalJWKSet({ keys: publicKeys() }), { issuer: ctx.issuer });
      token = state.issued.get(payload.jti);
    } catch { return undefined; }
  } else {
    token = await provider.RefreshToken.find(value);
  }
  return token && token.exp > Date.now() / 1000 ? token : undefined;
}

async function introspectOrRevoke(req, res, name) {
  const form = new URLSearchParams(await readBody(req));
  const endpoint = `${ctx.issuer}${ROUTES[name]}`;
  const client = await callingClient(req, form, endpoint);
  if (!client) return send(res, 401, { error: 'invalid_client' });
  const token = await findToken(ctx.provider, form.get('token') ?? '');
  const own = token && token.clientId === client.client_id;
  if (name === 'revocation') {
    if (own) await token.destroy();
    return send(res, 200, {});
  }
  if (!token || (client.token_endpoint_auth_method === 'none' && !own)) return send(res, 200, { active: false });
  const account = token.accountId ? config.accounts[token.accountId] : undefined;
  return send(res, 200, {
    active: true, token_type: token.kind === 'RefreshToken' ? undefined : 'Bearer', scope: token.scope,
    client_id: token.clientId, sub: token.accountId ?? token.clientId, uid: account?.uid,
    exp: token.exp, iat: token.iat, iss: ctx.issuer, jti: token.jti, aud: token.aud,
  });
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function admin(req, res, ctx) {
  const route = `${req.method} ${req.url}`;
  const body = req.method === 'POST' ? await readJson(req) : {};
  if (route === 'POST /__test/rotate') {
    const key = newKey();
    state.keys.unshift(key);
    ctx.provider = buildProvider(ctx.issuer);
    ctx.handler = ctx.provider.callback();
    return send(res, 200, { kid: key.kid });
  }
  if (route === 'POST /__test/ttl') {
    state.ttl = body.seconds;
    return send(res, 200, { ttl: state.ttl });
  }
  if (route === 'POST /__test/outage') {
    state.outage = { token: !!body.token, keys: !!body.keys };
    return send(res, 200, state.outage);
  }
  if (route === 'POST /__test/device/approve') {
    const { status, body: out } = await approveDevice(ctx.provider, body);
    return send(res, status, out);
  }
  if (route === 'GET /__test/stats') return send(res, 200, state.stats);
  return send(res, 404, { error: `no test route ${route}` });
}

function routeName(path) {
  const found = Object.entries(ROUTES).find(([, p]) => path === p);
  return found ? found[0] : path;
}

state.keys.push(newKey());
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/__test/')) {
    admin(req, res, ctx).catch((err) => send(res, 500, { error: String(err) }));
    return;
  }
  if (!req.url.startsWith(`${PREFIX}/`)) return send(res, 404, { error: 'not found' });
  const path = req.url.slice(PREFIX.length).split('?')[0];
  const name = routeName(path);
  state.stats[name] = (state.stats[name] ?? 0) + 1;
  if ((name === 'token' && state.outage.token) || (name === 'jwks' && state.outage.keys)) {
    return send(res, 503, { error: 'temporarily_unavailable' });
  }
  if (name === 'introspection' || name === 'revocation') {
    introspectOrRevoke(req, res, name).catch((err) => send(res, 500, { error: String(err) }));
    return;
  }
  if (name === 'jwks') res.setHeader('cache-control', `max-age=${config.keys_max_age ?? 300}`);
  req.originalUrl = req.url;
  req.url = req.url.slice(PREFIX.length);
  ctx.handler(req, res);
});

server.listen(config.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  ctx.issuer = `http://127.0.0.1:${port}${PREFIX}`;
  ctx.provider = buildProvider(ctx.issuer);
  ctx.handler = ctx.provider.callback();
  process.stdout.write(`READY ${port}\n`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
