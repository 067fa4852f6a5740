// Test tooling only: a real OIDC issuer on loopback for medlabel's auth tests, built on
// the npm package oauth2-mock-server (discovery, JWKS, a token endpoint with the
// password grant, RS256 keys it generates itself).
//
// Usage: node issuer.mjs '<config JSON>'   with OIDC_MODULES=<dir holding node_modules>
//   config: {"audience": "...", "users": {"<name>": {"password": "...", "roles": [...]}}}
//
// Prints one JSON line {"issuer": "<url>"} once it listens, then answers one JSON line
// per command read from standard input:
//   {"cmd": "token", "user": "alice", "expires_in": 60, "aud": "x", "iss": "y",
//    "no_kid": true, "kid": "k"}          -> {"token": "<jwt>"}
//   {"cmd": "rotate"}                      -> {"kid": "<new key id>"}  (new tokens use it)
// and exits when standard input closes.
//
// The password grant checks the users' passwords (the package itself accepts any) and
// puts Keycloak's claims in the access token: preferred_username, realm_access.roles,
// aud = the configured audience, azp = the client id.

import { createRequire } from 'node:module';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';

const config = JSON.parse(process.argv[2] ?? '{}');
const modules = process.env.OIDC_MODULES;
if (!modules) throw new Error('OIDC_MODULES is not set');
const resolved = createRequire(join(modules, 'package.json')).resolve('oauth2-mock-server');
const { OAuth2Server } = await import(pathToFileURL(resolved).href);

const server = new OAuth2Server();
let kid = (await server.issuer.keys.generate('RS256')).kid;
await server.start(0, '127.0.0.1');

const users = config.users ?? {};
const claimsOf = (name) => ({
  sub: `sub-${name}`,
  preferred_username: name,
  email: `${name}@example.org`,
  realm_access: { roles: users[name]?.roles ?? [] },
  aud: config.audience,
});

server.service.on('beforeTokenSigning', (token, req) => {
  // The access token carries `amr`; the id token built after it does not.
  if (req.body.grant_type === 'password' && 'amr' in token.payload) {
    Object.assign(token.payload, claimsOf(req.body.username), { azp: req.body.client_id });
  }
});
server.service.on('beforeResponse', (response, req) => {
  const user = users[req.body.username];
  if (req.body.grant_type === 'password' && user?.password !== req.body.password) {
    response.statusCode = 400;
    response.body = { error: 'invalid_grant', error_description: 'Invalid user credentials' };
  }
});

async function token(command) {
  return server.issuer.buildToken({
    kid: command.kid ?? kid,
    expiresIn: command.expires_in ?? 3600,
    scopesOrTransform: (header, payload) => {
      Object.assign(payload, claimsOf(command.user));
      if (command.aud !== undefined) payload.aud = command.aud;
      if (command.iss !== undefined) payload.iss = command.iss;
      if (command.no_kid) delete header.kid;
    },
  });
}

console.log(JSON.stringify({ issuer: server.issuer.url }));
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  let reply;
  try {
    if (command.cmd === 'token') {
      reply = { token: await token(command) };
    } else if (command.cmd === 'rotate') {
      kid = (await server.issuer.keys.generate('RS256')).kid;
      reply = { kid };
    } else {
      reply = { error: `unknown command ${command.cmd}` };
    }
  } catch (error) {
    reply = { error: String(error) };
  }
  console.log(JSON.stringify(reply));
}
await server.stop();
