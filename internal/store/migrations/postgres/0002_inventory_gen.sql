-- A counter bumped by every inventory change, so that readers can cache the
-- inventory and check it with one row.
CREATE TABLE inventory_gen (
	id  BIGINT PRIMARY KEY,
	gen BIGINT NOT NULL
);
INSERT INTO inventory_gen (id, gen) VALUES (1, 0);
