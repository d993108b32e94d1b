-- API tokens managed at run time (lake token create/list/revoke), beside the ones
-- in settings. Only the SHA-256 of a token is kept. Tokens are not tenant data:
-- Lake reads and writes them as the owner, outside tenant transactions. lake_app
-- gets no grant, and row-level security without a policy hides every row from any
-- other role that might be granted access by mistake.
CREATE TABLE lake_tokens (
    id         text PRIMARY KEY,
    tenant_id  text NOT NULL,
    token_hash text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    scope      text NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    note       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX lake_tokens_tenant_idx ON lake_tokens (tenant_id, created_at);
ALTER TABLE lake_tokens ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON lake_tokens FROM PUBLIC;
REVOKE ALL ON lake_tokens FROM lake_app;
