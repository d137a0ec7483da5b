// A real OAuth 2.1 / OpenID Connect authorization server for the OAuth tests: `oidc-provider`
// (OpenID Certified) on a loopback port, issuing JWT access tokens (ES256) for one resource.
// Usage: PORT=... RESOURCE=url KID=name [OPAQUE=1] [TTL=secs] [TOKEN_GROUPS=json] node auth_server.mjs
//   RESOURCE  the gateway's MCP URL: the audience of every access token
//   KID       the signing key's id: a new key is made at every start, so restarting with
//             another KID is a key rotation
//   OPAQUE=1  access tokens are opaque (checked by introspection) instead of JWTs
//   TOKEN_GROUPS {"client or account id": ["group", ...]}: the `groups` claim of their tokens
// Clients: "gateway-test" (secret "test-secret", client credentials, introspection),
// "svc-support" and "svc-other" (secret "test-secret", client credentials), and dynamic
// registration for public clients (authorization code + PKCE). Logins (devInteractions) accept
// any user name; the consent form asks once per client.
import Provider from "oidc-provider";
import { generateKeyPair, exportJWK } from "jose";

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const resource = process.env.RESOURCE;
const groups = JSON.parse(process.env.TOKEN_GROUPS || "{}");
const ttl = Number(process.env.TTL || 600);
const SCOPES = "mcp:tools tickets:write";

const { privateKey } = await generateKeyPair("ES256", { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: process.env.KID, alg: "ES256", use: "sig" };

const service = (client_id) => ({
  client_id,
  client_secret: "test-secret",
  grant_types: ["client_credentials"],
  redirect_uris: [],
  response_types: [],
  scope: SCOPES,
});

const provider = new Provider(issuer, {
  clients: [service("gateway-test"), service("svc-support"), service("svc-other")],
  jwks: { keys: [jwk] },
  clientDefaults: { id_token_signed_response_alg: "ES256" },
  scopes: ["openid", "offline_access", ...SCOPES.split(" ")],
  claims: { openid: ["sub"] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, target) => {
        if (target !== resource) throw new Error(`unknown resource ${target}`);
        return {
          scope: SCOPES,
          audience: resource,
          accessTokenTTL: ttl,
          accessTokenFormat: process.env.OPAQUE === "1" ? "opaque" : "jwt",
          jwt: { sign: { alg: "ES256" } },
        };
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    const who = token.accountId || token.clientId;
    return groups[who] ? { groups: groups[who] } : undefined;
  },
  findAccount: (_ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
  ttl: { AccessToken: ttl, ClientCredentials: ttl },
});
provider.listen(port, () => console.log("READY"));
