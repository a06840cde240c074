-- ferry control-plane schema, version 1 (PostgreSQL).
-- Times are Unix nanoseconds (BIGINT); JSON documents are TEXT.
CREATE TABLE sites (
	name        TEXT PRIMARY KEY,
	kind        TEXT NOT NULL,
	endpoint    TEXT NOT NULL,
	config      TEXT NOT NULL,
	credentials BYTEA,
	created     BIGINT NOT NULL,
	updated     BIGINT NOT NULL
);

CREATE TABLE inventory (
	site    TEXT NOT NULL,
	vm_id   TEXT NOT NULL,
	name    TEXT NOT NULL,
	power   TEXT NOT NULL,
	record  TEXT NOT NULL,
	updated BIGINT NOT NULL,
	PRIMARY KEY (site, vm_id)
);
CREATE INDEX inventory_name ON inventory (name);

CREATE TABLE jobs (
	id               TEXT PRIMARY KEY,
	kind             TEXT NOT NULL,
	state            TEXT NOT NULL,
	generation       BIGINT NOT NULL,
	river_id         BIGINT,
	args             TEXT NOT NULL,
	checkpoint       TEXT,
	progress         TEXT,
	result           TEXT,
	error            TEXT NOT NULL DEFAULT '',
	error_code       TEXT NOT NULL DEFAULT '',
	attempt          BIGINT NOT NULL DEFAULT 0,
	cancel_requested BIGINT NOT NULL DEFAULT 0,
	lease_owner      TEXT NOT NULL DEFAULT '',
	lease_expires    BIGINT NOT NULL DEFAULT 0,
	created_by       TEXT NOT NULL DEFAULT '',
	created          BIGINT NOT NULL,
	updated          BIGINT NOT NULL
);
CREATE INDEX jobs_state ON jobs (state, updated);
CREATE INDEX jobs_created ON jobs (created);

CREATE TABLE events (
	seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	job_id  TEXT NOT NULL,
	time    BIGINT NOT NULL,
	kind    TEXT NOT NULL,
	payload TEXT NOT NULL
);
CREATE INDEX events_job ON events (job_id, seq);

CREATE TABLE tokens (
	id      TEXT PRIMARY KEY,
	name    TEXT NOT NULL,
	role    TEXT NOT NULL,
	hash    TEXT NOT NULL UNIQUE,
	created BIGINT NOT NULL,
	revoked BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE audit (
	seq       BIGINT PRIMARY KEY,
	time      BIGINT NOT NULL,
	actor     TEXT NOT NULL,
	action    TEXT NOT NULL,
	target    TEXT NOT NULL,
	outcome   TEXT NOT NULL,
	detail    TEXT NOT NULL,
	prev_hash TEXT NOT NULL,
	hash      TEXT NOT NULL
);

CREATE TABLE audit_head (
	id   BIGINT PRIMARY KEY,
	seq  BIGINT NOT NULL,
	hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '');
