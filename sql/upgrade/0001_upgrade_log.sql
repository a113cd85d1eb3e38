-- An example upgrade script. Scripts in this directory (TENURE_UPGRADE_SCRIPTS) are applied
-- to a copy of each upload in name order, each in its own transaction, as the upload's own
-- unprivileged role. Replace them with the real upgrade of your application's schema.
CREATE TABLE IF NOT EXISTS public.tenure_upgrade_log (
    applied_at timestamptz NOT NULL DEFAULT now(),
    note       text NOT NULL
);
INSERT INTO public.tenure_upgrade_log (note) VALUES ('upgraded by the Tenure upgrade service');
