-- Placement (issue 17): each tenant server has a capacity (how many live databases it takes)
-- and a state. A create that names no server goes to the active server with the lowest share
-- of its capacity in use; a draining server takes no new databases.
ALTER TABLE tenant_servers ADD COLUMN capacity integer NOT NULL DEFAULT 500 CHECK (capacity >= 0);
ALTER TABLE tenant_servers ADD COLUMN state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining'));
