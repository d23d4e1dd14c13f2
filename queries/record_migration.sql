-- Records a migration as applied, in the transaction that applied it.
-- Parameters: version, name.
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s)
