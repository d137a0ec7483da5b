// Access tokens for `cargo xtask bench oauth`: one RS256 key (the common IdP default) as a JWKS
// file, and COUNT distinct JWTs of it (each its own subject), valid for a day.
// Usage: node bench_tokens.mjs <dir> <issuer> <resource> <count>
// Writes <dir>/jwks.json and <dir>/tokens.txt (one token per line).
import { writeFileSync } from "node:fs";
import { SignJWT, exportJWK, generateKeyPair } from "jose";

const [dir, issuer, resource, count] = process.argv.slice(2);
const { publicKey, privateKey } = await generateKeyPair("RS256");
const jwk = { ...(await exportJWK(publicKey)), kid: "bench", alg: "RS256", use: "sig" };
writeFileSync(`${dir}/jwks.json`, JSON.stringify({ keys: [jwk] }));
const tokens = [];
const now = Math.floor(Date.now() / 1000);
for (let i = 0; i < Number(count); i++) {
  tokens.push(
    await new SignJWT({ scope: "mcp:tools", groups: ["bench"] })
      .setProtectedHeader({ alg: "RS256", kid: "bench", typ: "at+jwt" })
      .setIssuer(issuer)
      .setAudience(resource)
      .setSubject(`user${i}`)
      .setIssuedAt(now)
      .setExpirationTime(now + 86400)
      .sign(privateKey),
  );
}
writeFileSync(`${dir}/tokens.txt`, tokens.join("\n"));
