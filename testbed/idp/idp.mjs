// A real OpenID provider for end-to-end tests, on loopback.
//
// Environment:
//   IDP_PORT        port to listen on (127.0.0.1)
//   IDP_KEYS        file with the signing keys (private JWKs); created with new keys
//                   when missing, so a restart with a fresh file rotates the keys
//   IDP_CLIENTS     JSON array of extra client metadata (optional); `groups` and `org`
//                   become claims of the client's access tokens
//   IDP_TOKEN_TTL   access/ID token lifetime in seconds (default 600)
//
// Browser logins (the `oidc` filter's tests): devInteractions serves the login and
// consent forms (any login and password; the login is the subject); a client whose
// grant_types include refresh_token gets a refresh token; end_session is on.
//
// Access tokens are JWTs. Each resource server signs with one algorithm, so a test
// picks the algorithm with the `resource` parameter:
//   urn:portcullis:rs256, urn:portcullis:es256, urn:portcullis:eddsa
// Prints "ready <issuer>" on stdout when it serves.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.IDP_PORT || 4000);
const issuer = `http://127.0.0.1:${port}`;
const keysFile = process.env.IDP_KEYS;
const ttl = Number(process.env.IDP_TOKEN_TTL || 600);

function newKeys() {
  const jwk = (pair, extra) => ({ ...pair.privateKey.export({ format: 'jwk' }), kid: `${extra.alg.toLowerCase()}-${randomUUID().slice(0, 8)}`, use: 'sig', ...extra });
  return [
    jwk(generateKeyPairSync('rsa', { modulusLength: 2048 }), { alg: 'RS256' }),
    jwk(generateKeyPairSync('ec', { namedCurve: 'P-256' }), { alg: 'ES256' }),
    jwk(generateKeyPairSync('ed25519'), { alg: 'EdDSA' }),
  ];
}

let keys;
if (keysFile && existsSync(keysFile)) {
  keys = JSON.parse(readFileSync(keysFile, 'utf8'));
} else {
  keys = newKeys();
  if (keysFile) writeFileSync(keysFile, JSON.stringify(keys), { mode: 0o600 });
}

const resources = {
  'urn:portcullis:rs256': 'RS256',
  'urn:portcullis:es256': 'ES256',
  'urn:portcullis:eddsa': 'EdDSA',
};

const clients = [
  {
    client_id: 'api-client',
    client_secret: process.env.IDP_CLIENT_SECRET || randomUUID(),
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: 'orders:read',
  },
  ...JSON.parse(process.env.IDP_CLIENTS || '[]'),
];

const provider = new Provider(issuer, {
  clients,
  jwks: { keys },
  scopes: ['openid', 'offline_access', 'orders:read'],
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    // RFC 7662 and RFC 7009: opaque tokens checked and revoked (jwt-auth's
    // introspection providers).
    introspection: { enabled: true },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A client registered with `userinfo_tokens` gets access tokens for no resource
      // server (opaque), which the userinfo endpoint accepts; the others get JWTs for
      // urn:portcullis:rs256, which it refuses.
      defaultResource: (ctx, client) => (client?.metadata().userinfo_tokens ? undefined : 'urn:portcullis:rs256'),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        const alg = resources[resource];
        if (!alg) throw new Error(`unknown resource ${resource}`);
        return { scope: 'orders:read', audience: resource, accessTokenTTL: ttl, accessTokenFormat: 'jwt', jwt: { sign: { alg } } };
      },
    },
  },
  ttl: { ClientCredentials: ttl, AccessToken: ttl, IdToken: ttl },
  // A browser login `name+g1+g2` is the subject `name+g1+g2` in groups g1 and g2: the
  // ID token carries `groups` (claim rules' test data; none for a plain login).
  findAccount: (ctx, sub) => ({
    accountId: sub,
    claims: () => {
      const groups = sub.split('+').slice(1);
      return groups.length ? { sub, groups } : { sub };
    },
  }),
  claims: { acr: null, sid: null, auth_time: null, iss: null, openid: ['sub', 'groups'] },
  conformIdTokenClaims: false,
  acrValues: ['urn:portcullis:pwd', 'urn:portcullis:mfa'],
  // A client the tests give `groups` or `org` (IDP_CLIENTS) has them as claims in its
  // access tokens: data for claim rules.
  extraClientMetadata: { properties: ['groups', 'org', 'userinfo_tokens'] },
  extraTokenClaims: async (ctx, token) => {
    const client = await provider.Client.find(token.clientId);
    if (!client) return undefined;
    const { groups, org } = client.metadata();
    const extra = {};
    if (groups !== undefined) extra.groups = groups;
    if (org !== undefined) extra.org = org;
    return extra;
  },
  // Refresh tokens for every client allowed the grant, not only with offline_access
  // and a consent prompt (the library's default).
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Back-channel logout tokens go to the gateway under test on loopback, which the
  // library's SSRF guard (no special-use addresses) would refuse: a test IdP only.
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
});
provider.proxy = true;
// The dev login form knows nothing of authentication levels: a login whose name holds
// `+mfa` counts as multi-factor (acr urn:portcullis:mfa), any other as a password
// (urn:portcullis:pwd). The ID token carries it as `acr`.
const interactionFinished = provider.interactionFinished.bind(provider);
provider.interactionFinished = (req, res, result, options) => {
  if (result?.login?.accountId) {
    const mfa = result.login.accountId.split('+').includes('mfa');
    result.login.acr = mfa ? 'urn:portcullis:mfa' : 'urn:portcullis:pwd';
  }
  return interactionFinished(req, res, result, options);
};
// Internal errors on stderr (the tests show it when they fail), never in a reply.
provider.on('server_error', (ctx, err) => console.error('server_error', ctx.path, err));
provider.on('backchannel.error', (ctx, err, client) => console.error('backchannel.error', client.clientId, err.message, err.cause && (err.cause.code || err.cause.message)));

provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
