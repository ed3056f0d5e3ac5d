// Development OpenID Connect provider for the end-to-end sign-in tests.
//
// Test-only: it accepts any login name and password on its built-in
// development pages. Never expose it beyond the loopback interface.
//
// Settings come from command-line flags (--name=value or --name value) or,
// failing that, from environment variables:
//
//   --port                      OIDC_PORT                      (required)
//   --client-id                 OIDC_CLIENT_ID                 (required)
//   --client-secret             OIDC_CLIENT_SECRET             (required)
//   --redirect-uri              OIDC_REDIRECT_URI              (required)
//   --post-logout-redirect-uri  OIDC_POST_LOGOUT_REDIRECT_URI  (default: the redirect uri)
//   --host                      OIDC_HOST                      (default: 127.0.0.1)
//
// The issuer is http://<host>:<port>; discovery lives at
// <issuer>/.well-known/openid-configuration.
//
// Accounts: the login name typed on the development login page becomes the
// account id. Its email claim is the login name when that contains '@',
// otherwise "<login>@example.com"; the name claim is derived from the local part.

import { parseArgs } from 'node:util';
import process from 'node:process';

import Provider, { interactionPolicy } from 'oidc-provider';

const { values: flags } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    'redirect-uri': { type: 'string' },
    'post-logout-redirect-uri': { type: 'string' },
  },
  strict: true,
});

function setting(flag, envName, fallback) {
  const value = flags[flag] ?? process.env[envName] ?? fallback;
  if (value === undefined || value === '') {
    console.error(`provider.mjs: missing --${flag} (or ${envName})`);
    process.exit(2);
  }
  return value;
}

const host = setting('host', 'OIDC_HOST', '127.0.0.1');
const port = Number.parseInt(setting('port', 'OIDC_PORT'), 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('provider.mjs: --port must be a TCP port number');
  process.exit(2);
}
const clientId = setting('client-id', 'OIDC_CLIENT_ID');
const clientSecret = setting('client-secret', 'OIDC_CLIENT_SECRET');
const redirectUri = setting('redirect-uri', 'OIDC_REDIRECT_URI');
const postLogoutRedirectUri = setting(
  'post-logout-redirect-uri',
  'OIDC_POST_LOGOUT_REDIRECT_URI',
  redirectUri,
);

const issuer = `http://${host}:${port}`;

function accountClaims(accountId) {
  const email = accountId.includes('@') ? accountId : `${accountId}@example.com`;
  const localPart = email.split('@')[0];
  const name = localPart
    .split(/[._-]+/)
    .filter(Boolean)
    .map((part) => part[0].toUpperCase() + part.slice(1))
    .join(' ') || localPart;
  return { sub: accountId, email, email_verified: true, name };
}

// Streamlit's st.login() sends prompt=select_account. The default policy does
// not know that prompt and rejects the request ("unsupported prompt value
// requested"). Register it as requestable with no checks, so it is accepted and
// never forces an extra interaction. (Apps may also send prompt=login instead.)
const policy = interactionPolicy.base();
if (!policy.get('select_account')) {
  const selectAccount = new interactionPolicy.Prompt({
    name: 'select_account',
    requestable: true,
  });
  selectAccount.checks.clear();
  policy.add(selectAccount);
}

const configuration = {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      redirect_uris: [redirectUri],
      post_logout_redirect_uris: [...new Set([postLogoutRedirectUri, redirectUri])],
      response_types: ['code'],
      grant_types: ['authorization_code'],
    },
  ],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // Put the scope claims into the ID token too: Authlib builds st.user from the
  // ID token alone and never calls userinfo.
  conformIdTokenClaims: false,
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return accountClaims(sub);
      },
    };
  },
  interactions: { policy },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  // Fixed keys keep the provider from warning about its built-in defaults; this
  // provider only ever runs on loopback for tests.
  cookies: { keys: ['audit-portal-e2e-cookie-key-0123456789'] },
};

const provider = new Provider(issuer, configuration);

provider.on('server_error', (ctx, err) => {
  console.error('provider server_error:', err);
});
provider.on('authorization.error', (ctx, err) => {
  console.error('provider authorization.error:', err.message, err.error_description ?? '');
});
provider.on('grant.error', (ctx, err) => {
  console.error('provider grant.error:', err.message, err.error_description ?? '');
});
provider.on('end_session.error', (ctx, err) => {
  console.error('provider end_session.error:', err.message, err.error_description ?? '');
});

const server = provider.listen(port, host, () => {
  console.log(`oidc-provider listening on ${issuer} (client_id=${clientId})`);
  console.log(`discovery: ${issuer}/.well-known/openid-configuration`);
});

function shutdown(signal) {
  console.log(`oidc-provider: ${signal} received, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
