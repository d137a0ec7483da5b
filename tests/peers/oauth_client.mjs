// An MCP client of the official TypeScript SDK (v1) that signs in the way the MCP authorization
// spec has it, with the SDK's own OAuth support: a 401 from the server, its Protected Resource
// Metadata, the authorization server's metadata, dynamic client registration, authorization
// code with PKCE, the token, then the calls. The user's part (the login form of the
// authorization server, oidc-provider's devInteractions) is done here over plain HTTP.
// Usage: node oauth_client.mjs <mcp url> <login name> <tool to call>
// Prints one JSON object: what was discovered, the tools listed, the call's result.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const [url, login, tool] = process.argv.slice(2);
const REDIRECT = "http://127.0.0.1:1/callback";
const out = { steps: [] };

// What a real client keeps between the redirect and the callback.
const store = {};
let authorizationCode;

/// Plays the user at the authorization server: follows its redirects with its cookies, fills
/// in the login form (and the consent form, if asked), and stops at the redirect to the client.
async function signIn(authorizationUrl) {
  const cookies = new Map();
  const send = async (target, init = {}) => {
    const headers = { ...(init.headers || {}), cookie: [...cookies].map(([k, v]) => `${k}=${v}`).join("; ") };
    const response = await fetch(target, { ...init, headers, redirect: "manual" });
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(";");
      const at = pair.indexOf("=");
      cookies.set(pair.slice(0, at), pair.slice(at + 1));
    }
    return response;
  };
  let next = authorizationUrl.toString();
  let response = await send(next);
  for (let step = 0; step < 20; step++) {
    if (response.status >= 300 && response.status < 400) {
      next = new URL(response.headers.get("location"), next).toString();
      if (next.startsWith(REDIRECT)) {
        const params = new URL(next).searchParams;
        out.steps.push("redirected back with a code");
        out.iss = params.get("iss");
        authorizationCode = params.get("code");
        return;
      }
      response = await send(next);
      continue;
    }
    const html = await response.text();
    const action = new URL(html.match(/action="([^"]+)"/)[1].replaceAll("&amp;", "&"), next).toString();
    const prompt = html.match(/name="prompt" value="([^"]+)"/)[1];
    out.steps.push(`${prompt} form`);
    const form = new URLSearchParams({ prompt });
    if (prompt === "login") {
      form.set("login", login);
      form.set("password", "any");
    }
    response = await send(action, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: form.toString(),
    });
    next = action;
  }
  throw new Error("the sign-in did not come back to the client");
}

const provider = {
  get redirectUrl() {
    return REDIRECT;
  },
  get clientMetadata() {
    return {
      client_name: "gateway-e2e",
      redirect_uris: [REDIRECT],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
      application_type: "native",
    };
  },
  clientInformation: () => store.client,
  saveClientInformation: (client) => {
    out.steps.push("registered");
    store.client = client;
  },
  tokens: () => store.tokens,
  saveTokens: (tokens) => {
    out.steps.push("token");
    store.tokens = tokens;
  },
  redirectToAuthorization: async (authorizationUrl) => {
    out.resource = authorizationUrl.searchParams.get("resource");
    out.scope = authorizationUrl.searchParams.get("scope");
    out.steps.push("authorize");
    await signIn(authorizationUrl);
  },
  saveCodeVerifier: (verifier) => {
    store.verifier = verifier;
  },
  codeVerifier: () => store.verifier,
};

const connect = async () => {
  const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  const client = new Client({ name: "gateway-e2e", version: "1.0.0" });
  await client.connect(transport);
  return { client, transport };
};

try {
  let connected;
  try {
    connected = await connect();
  } catch (err) {
    if (!(err instanceof UnauthorizedError)) throw err;
    out.steps.push("401");
    const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
    await transport.finishAuth(authorizationCode);
    connected = await connect();
  }
  const { client } = connected;
  out.tools = [];
  let cursor;
  do {
    const page = await client.listTools(cursor ? { cursor } : undefined);
    out.tools.push(...page.tools.map((t) => t.name));
    cursor = page.nextCursor;
  } while (cursor);
  const result = await client.callTool({ name: tool, arguments: {} });
  out.call = result.isError ? `error: ${result.content?.[0]?.text}` : result.content?.[0]?.text;
  await client.close();
} catch (err) {
  out.error = String(err?.stack || err);
}
console.log(JSON.stringify(out));
