// The demo's OpenID Connect provider: panva's oidc-provider (OpenID Certified) with a login
// page that checks real passwords against the people file `aifactory cluster up` writes.
//
// Two clients, shaped like the two federations an AI factory meets:
//   sram        SURF Research Access Management: sub "<hex>@sram.surf.nl", uid (the Unix
//               login), email, eduperson_entitlement (AARC-G002 group URNs)
//   myaccessid  EuroHPC's MyAccessID: an opaque sub "<hex>@myaccessid.org" and entitlements,
//               no uid (the site's map of sub to account decides the account)
//
// Usage: node idp.mjs STATE_DIR   (STATE_DIR/config.json names the issuer, port, clients,
// its certificate, the folder of its own keys;
// STATE_DIR/people.json the people; both written by `up`, read again when they change).
// Grants, sessions and refresh tokens are kept in memory: a restart of this demo IdP asks
// everyone to log in again at their next refresh.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import querystring from 'node:querystring';

import Provider, { errors } from 'oidc-provider';

const stateDir = process.argv[2];
const config = JSON.parse(fs.readFileSync(path.join(stateDir, 'config.json'), 'utf8'));

// The people, read again whenever the file changes: removing an entitlement there is
// removing it "at the IdP".
const peopleFile = path.join(stateDir, 'people.json');
let people = { mtime: 0, byLogin: new Map() };
function currentPeople() {
  const mtime = fs.statSync(peopleFile).mtimeMs;
  if (mtime !== people.mtime) {
    const list = JSON.parse(fs.readFileSync(peopleFile, 'utf8')).people;
    people = { mtime, byLogin: new Map(list.map((p) => [p.login, p])) };
  }
  return people.byLogin;
}

// An account id is the login. Each client sees its own kind of sub (pairwise subjects: the
// SRAM-like client "<hex>@sram.surf.nl", the MyAccessID-like one "<hex>@myaccessid.org")
// and its own claims.
function claimsFor(shape, person) {
  if (shape === 'sram') {
    return { sub: person.login, uid: person.uid, email: person.email,
             eduperson_entitlement: person.entitlements };
  }
  return { sub: person.login, eduperson_entitlement: person.entitlements };
}

function subjectFor(shape, person) {
  return shape === 'sram' ? person.sram_sub : person.myaccessid_sub;
}

// scrypt off the event loop (a flood of logins must not stall everyone's), the same work
// for a login nobody has (the answer's time does not tell who exists), and at most
// MAX_FAILURES wrong passwords per login a minute.
const MAX_FAILURES = 10;
const failures = new Map();
const NOBODY = { salt: crypto.randomBytes(16).toString('hex'), hash: '00'.repeat(32) };

function scrypt(password, salt) {
  return new Promise((resolve, reject) => {
    crypto.scrypt(password, salt, 32, { N: 16384, r: 8, p: 1 },
                  (err, key) => (err ? reject(err) : resolve(key)));
  });
}

async function passwordMatches(person, password) {
  const { salt, hash } = person ? person.password : NOBODY;
  const got = await scrypt(password, Buffer.from(salt, 'hex'));
  return crypto.timingSafeEqual(got, Buffer.from(hash, 'hex')) && Boolean(person);
}

function tooManyFailures(login) {
  const now = Date.now();
  const recent = (failures.get(login) || []).filter((t) => now - t < 60000);
  failures.set(login, recent);
  return recent.length >= MAX_FAILURES;
}

// Signing keys and cookie keys survive a restart (tokens already issued stay verifiable).
function persistent(name, make) {
  const file = path.join(config.keys_dir, name);
  if (!fs.existsSync(file)) fs.writeFileSync(file, JSON.stringify(make()), { mode: 0o600 });
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}
const jwks = persistent('jwks.json', () => {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(),
                    use: 'sig', alg: 'RS256' }] };
});
const cookieKeys = persistent('cookie-keys.json', () => [crypto.randomBytes(32).toString('hex')]);

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    client_name: c.client_name,
    redirect_uris: c.redirect_uris,
    post_logout_redirect_uris: c.post_logout_redirect_uris,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
    subject_type: 'pairwise',
  })),
  subjectTypes: ['public', 'pairwise'],
  pairwiseIdentifier: async (ctx, accountId, client) => {
    const person = currentPeople().get(accountId);
    if (!person) throw new Error('no such person');
    return subjectFor(shapeOf(client.clientId), person);
  },
  findAccount: async (ctx, accountId) => {
    const person = currentPeople().get(accountId);
    if (!person) return undefined;
    const shape = shapeOf(ctx.oidc.client.clientId);
    return { accountId, claims: async () => claimsFor(shape, person) };
  },
  claims: {
    openid: ['sub'],
    email: ['email'],
    uid: ['uid'],
    entitlements: ['eduperson_entitlement'],
  },
  scopes: ['openid', 'offline_access', 'email', 'uid', 'entitlements'],
  // A refresh token for every login of a client that may refresh (as Keycloak and the
  // federations' proxies do): by default oidc-provider drops offline_access unless the hub
  // asks for prompt=consent, and without a refresh token every login ended with its first
  // access token.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: {
    devInteractions: { enabled: false },  // its login accepts any password
    rpInitiatedLogout: { enabled: true },
  },
  jwks,
  cookies: { keys: cookieKeys },
  // Short access tokens, so that the hub's refresh really uses the refresh token.
  ttl: {
    AccessToken: config.access_token_seconds,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
    Interaction: 600,
    Session: 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Login failed', `<p>${escape(out.error_description || out.error)}</p>`);
  },
});
provider.proxy = false;

function shapeOf(clientId) {
  return config.clients.find((c) => c.client_id === clientId).shape;
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escape(title)}</title>
<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}input{display:block;margin:.3em 0 1em;width:100%}</style>
</head><body><h1>${escape(title)}</h1>${body}</body></html>`;
}

function loginPage(uid, clientName, message) {
  return page(`Log in to ${clientName}`, `
${message ? `<p id="error" role="alert">${escape(message)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
<label>Username <input id="login" name="login" autofocus></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="submit" type="submit">Log in</button>
</form>`);
}

async function formBody(req) {
  let raw = '';
  for await (const chunk of req) {
    raw += chunk;
    if (raw.length > 10000) throw new Error('form too large');
  }
  return querystring.parse(raw);
}

// The interactions: a login page with real passwords, and consent given for the site's own
// clients (an institution's IdP asks once; the demo's clients are all the site's).
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/);
  if (!match) return next();
  ctx.set('Cache-Control', 'no-store');
  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (e) {
    console.log(`interaction ${match[1]} not found: ${e.message}`);
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Login expired', '<p>This login page has expired. Go back to the hub and log in again.</p>');
    return undefined;
  }
  const { uid, prompt, params } = details;
  const client = await provider.Client.find(params.client_id);
  ctx.type = 'html';
  if (prompt.name === 'login') {
    if (ctx.method === 'GET' && !match[2]) {
      ctx.body = loginPage(uid, client.clientName, '');
      return undefined;
    }
    if (ctx.method === 'POST' && match[2]) {
      const form = await formBody(ctx.req);
      const login = String(form.login || '').slice(0, 64);
      if (tooManyFailures(login)) {
        console.log(`login refused for ${JSON.stringify(login)}: too many wrong passwords`);
        ctx.status = 429;
        ctx.body = loginPage(uid, client.clientName,
                             'Too many wrong passwords: wait a minute, then try again.');
        return undefined;
      }
      const person = currentPeople().get(login);
      if (!(await passwordMatches(person, String(form.password || '')))) {
        failures.get(login).push(Date.now());
        console.log(`login refused for ${JSON.stringify(login)}: wrong username or password`);
        ctx.status = 401;
        ctx.body = loginPage(uid, client.clientName, 'Wrong username or password.');
        return undefined;
      }
      console.log(`login of ${person.login} for ${client.clientId}`);
      return provider.interactionFinished(ctx.req, ctx.res,
        { login: { accountId: person.login } }, { mergeWithLastSubmission: false });
    }
  }
  if (prompt.name === 'consent') {
    const { accountId } = details.session;
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: client.clientId });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    const grantId = await grant.save();
    return provider.interactionFinished(ctx.req, ctx.res,
      { consent: details.grantId ? {} : { grantId } }, { mergeWithLastSubmission: true });
  }
  throw new errors.InvalidRequest(`unexpected prompt ${prompt.name}`);
});

// https only: browsers reach it, and its cookies and codes must not travel in the clear.
const tls = { cert: fs.readFileSync(config.tls.cert), key: fs.readFileSync(config.tls.key) };
https.createServer(tls, provider.callback()).listen(config.port, config.host, () => {
  console.log(`aifactory demo IdP: ${config.issuer} (listening on ${config.host}:${config.port})`);
});
