"""The database schema: its versions, and one-step migrations between them.

The schema's version is ``PRAGMA user_version``. Version 3 is the first released schema; it is
created in one step on an empty file (versions 1 and 2 never left development). Every later
change is a function taking the schema from version i to i + 1, run in its own transaction,
with a comment saying why; a database of any released version is brought up to date on open.
"""
from __future__ import annotations

import sqlite_utils

from ..errors import SchemaTooNew

FIRST_RELEASED = 3


# Jobs hold the recipe as JSON (the per-image seed is the job's seed + index) plus kind-specific
# params; images hold their own complete recipe so an image never depends on its job row.
_JOBS = """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'queued',
            recipe TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            n INTEGER NOT NULL,
            seed INTEGER NOT NULL,
            done INTEGER NOT NULL DEFAULT 0,
            step INTEGER NOT NULL DEFAULT 0,
            steps INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL,
            started TEXT,
            finished TEXT,
            updated TEXT NOT NULL,
            error TEXT,
            worker TEXT,
            heartbeat REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0
        )"""
# Imported files are recognised by where they came from, their size and mtime; an upscale is a
# child row, and which upscaler made it decides whether a request is a duplicate.
_IMAGES = """
        CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            job_id INTEGER REFERENCES jobs(id),
            idx INTEGER,
            kind TEXT NOT NULL DEFAULT 'generated',
            seed INTEGER,
            path TEXT NOT NULL UNIQUE,
            animation_path TEXT,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            prompt TEXT NOT NULL DEFAULT '',
            recipe TEXT NOT NULL,
            model TEXT,
            clip_model TEXT,
            device TEXT,
            created TEXT NOT NULL,
            starred INTEGER NOT NULL DEFAULT 0,
            parent_id INTEGER REFERENCES images(id),
            sha256 TEXT, source_path TEXT, source_size INTEGER, source_mtime REAL, upscaler TEXT,
            UNIQUE (job_id, idx)
        )"""
# Search compares embeddings of one CLIP only, and the gallery may search with a CLIP other than
# the one that guided an image: embeddings live in their own table keyed by model.
_EMBEDDINGS = """
        CREATE TABLE embeddings (
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            vector BLOB NOT NULL,
            PRIMARY KEY (model, image_id)
        )"""
_V3_INDEXES = (
    "CREATE INDEX jobs_status ON jobs(status, id)",
    "CREATE INDEX images_created ON images(created DESC, id DESC)",
    "CREATE INDEX images_starred ON images(starred, id)",
    "CREATE INDEX images_parent ON images(parent_id)",
    "CREATE INDEX images_source ON images(source_path)",
    "CREATE INDEX images_sha ON images(sha256)",
    "CREATE INDEX images_job ON images(job_id, idx)",
    "CREATE UNIQUE INDEX images_upscale ON images(parent_id, upscaler) WHERE upscaler IS NOT NULL",
    "CREATE INDEX embeddings_image ON embeddings(image_id)",
)


def _create_v3(db: sqlite_utils.Database) -> None:
    for sql in (_JOBS, _IMAGES, _EMBEDDINGS, *_V3_INDEXES):
        db.execute(sql)
    # Prompt keyword filter: FTS5 over prompts, kept in step by triggers.
    db["images"].enable_fts(["prompt"], fts_version="FTS5", create_triggers=True, tokenize="porter")


_V4 = (
    # Logins to the site: a session cookie names a row here (by the hash of its random token), so
    # logging out or setting a new password revokes sessions on the server, not only in one browser.
    "CREATE TABLE sessions (token_hash TEXT PRIMARY KEY, created TEXT NOT NULL)",
    # Triage: a 0-5 rating beside the star, and rejection into a trash that loses nothing until it
    # is emptied (the time it was rejected, or NULL). Most views show only what is not rejected.
    "ALTER TABLE images ADD COLUMN rating INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE images ADD COLUMN rejected TEXT",
    "CREATE INDEX images_live ON images(id) WHERE rejected IS NULL",
    "CREATE INDEX images_trash ON images(rejected, id) WHERE rejected IS NOT NULL",
    # Emptying the trash deletes rows, then files: the files' paths wait here in between, so a kill
    # midway leaves every file either with its row or listed for deletion, never forgotten.
    "CREATE TABLE purge_queue (path TEXT PRIMARY KEY)",
    # Change counters kept by triggers: readers (the search index, the taste model) learn that
    # something changed from one row instead of re-reading a table on every request.
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO counters VALUES ('embeddings', 0), ('labels', 0)",
    *(f"CREATE TRIGGER embeddings_{op.lower()}_count AFTER {op} ON embeddings BEGIN "
      "UPDATE counters SET value = value + 1 WHERE name = 'embeddings'; END" for op in ("INSERT", "UPDATE", "DELETE")),
    "CREATE TRIGGER images_labels_update AFTER UPDATE OF starred, rating, rejected ON images BEGIN "
    "UPDATE counters SET value = value + 1 WHERE name = 'labels'; END",
    "CREATE TRIGGER images_labels_delete AFTER DELETE ON images BEGIN "
    "UPDATE counters SET value = value + 1 WHERE name = 'labels'; END",
)


def _m3_sessions_and_triage(db: sqlite_utils.Database) -> None:
    for sql in _V4:
        db.execute(sql)


_V5 = (
    # Where an image was made (a node of a cluster; ``device`` already says which device there),
    # and the prompt template its prompt was expanded from (NULL for a plain prompt).
    "ALTER TABLE images ADD COLUMN node TEXT",
    "ALTER TABLE images ADD COLUMN template TEXT",
    # Collections: named sets of images (an imported folder becomes one). Deleting an image takes
    # it out of its collections; names are unique without regard to case.
    "CREATE TABLE collections (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, "
    "created TEXT NOT NULL)",
    "CREATE TABLE collection_images (collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE, "
    "image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE, added TEXT NOT NULL, "
    "PRIMARY KEY (collection_id, image_id)) WITHOUT ROWID",
    "CREATE INDEX collection_images_image ON collection_images(image_id)",
)


def _m4_provenance_and_collections(db: sqlite_utils.Database) -> None:
    for sql in _V5:
        db.execute(sql)


# MIGRATIONS[v] takes a database from version v to v + 1.
MIGRATIONS = {3: _m3_sessions_and_triage, 4: _m4_provenance_and_collections}
SCHEMA_VERSION = FIRST_RELEASED + len(MIGRATIONS)


def upgrade(db: sqlite_utils.Database, version: int) -> None:
    """Take the schema one step up from ``version`` (0 creates the first released schema)."""
    if version == 0:
        _create_v3(db)
    elif version < FIRST_RELEASED:
        raise SchemaTooNew(f"the database has schema {version}, made by an unreleased clip-curator; "
                           "export its images and import them into a new gallery")
    else:
        MIGRATIONS[version](db)


def target_after(version: int) -> int:
    """The version ``upgrade`` leaves a database of ``version`` at."""
    return FIRST_RELEASED if version == 0 else version + 1


def fts_query(keyword: str) -> str:
    """Quote each word of a keyword filter so FTS5 syntax in user text is taken literally."""
    words = [w for w in keyword.replace('"', " ").split() if w]
    return " ".join(f'"{w}"' for w in words) or '""'
