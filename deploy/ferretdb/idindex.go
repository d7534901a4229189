package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the SQLite driver FerretDB itself uses
)

// FerretDB v1.24's SQLite backend indexes _id as `_ferretdb_sjson->"_id"`, but looks
// documents up with `_ferretdb_sjson->'$._id'`. SQLite uses an expression index only for the
// same expression, so every find, update and delete by _id scanned the whole collection:
// 20 ms per update at 5,000 documents, growing with the collection. indexIDs adds an index
// on the expression the queries use to every collection table, shortly after its creation.
// The index is invisible to clients (FerretDB lists indexes from its own metadata) and is
// dropped with its table.

const idIndexSuffix = "_sched_id_lookup"

// sqliteDir is the directory of a FerretDB SQLite URI such as "file:data/?_pragma=...".
func sqliteDir(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", err
	}
	if u.Scheme != "file" {
		return "", fmt.Errorf("not a file: URI: %q", uri)
	}
	dir := u.Opaque
	if dir == "" {
		dir = u.Path
	}
	return dir, nil
}

// indexIDs checks every second the databases whose files changed and indexes new tables.
func indexIDs(ctx context.Context, dir string, logger *slog.Logger) {
	seen := map[string]time.Time{}
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*.sqlite"))
		for _, file := range files {
			changed := lastChange(file)
			if changed.Equal(seen[file]) {
				continue
			}
			if err := indexFile(ctx, file); err != nil {
				logger.Warn("indexing _id lookups", "file", file, "error", err)
				continue
			}
			seen[file] = changed
		}
	}
}

// lastChange is the latest modification time of a database file and its write-ahead log.
func lastChange(file string) time.Time {
	var latest time.Time
	for _, f := range []string{file, file + "-wal"} {
		if info, err := os.Stat(f); err == nil && info.ModTime().After(latest) {
			latest = info.ModTime()
		}
	}
	return latest
}

func indexFile(ctx context.Context, file string) error {
	db, err := sql.Open("sqlite", "file:"+file+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "SELECT table_name FROM _ferretdb_collections")
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return nil // a database FerretDB is still creating
		}
		return err
	}
	var tables []string
	for rows.Next() {
		var table string
		if err := rows.Scan(&table); err != nil {
			rows.Close()
			return err
		}
		tables = append(tables, table)
	}
	rows.Close()
	for _, table := range tables {
		q := fmt.Sprintf(
			`CREATE INDEX IF NOT EXISTS %q ON %q (_ferretdb_sjson->'$._id')`, table+idIndexSuffix, table,
		)
		if _, err := db.ExecContext(ctx, q); err != nil && !strings.Contains(err.Error(), "no such table") {
			return err
		}
	}
	return nil
}
