#!/usr/bin/env bash
# Builds Open Integration Engine (the open-source Mirth Connect fork) from its public
# repository with the repository's own ant build, offline. Used by scripts/interop-oie.sh;
# docs/interop.md says why each step is needed.
#
#   OIE_SRC=/path/to/engine.git scripts/oie-build.sh     # prints the built server dir
#
# OIE_SRC is a git directory (or a checkout's .git) of the public repository holding
# commit 8175b478 (OIE 4.5.2). The build lands in $ADT_ROUTER_CACHE/oie (reused).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${ADT_ROUTER_CACHE:-$HOME/.cache/adt-router}"
OIE_COMMIT="${OIE_COMMIT:-8175b478}"
OUT="$CACHE/oie"
log() { printf 'oie-build: %s\n' "$*" >&2; }

if [ -x "$OUT/setup/oieserver" ] || [ -f "$OUT/setup/mirth-server-launcher.jar" ]; then
  echo "$OUT/setup"
  exit 0
fi
: "${OIE_SRC:?set OIE_SRC to a git directory of the Open Integration Engine repository}"

log "Debian packages: ant, Java 17, Bouncy Castle 1.72, sqlite-jdbc, OpenJFX 11"
need=()
for p in ant libbcprov-java libbcpkix-java libbcutil-java libxerial-sqlite-jdbc-java libopenjfx-java; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -q && apt-get install -y -q "${need[@]}"
fi

log "exporting $OIE_COMMIT (blobs absent from a snapshot are skipped and replaced below)"
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp/src"
python3 - "$OIE_SRC" "$OIE_COMMIT" "$OUT.tmp/src" <<'PY'
import os, subprocess, sys
git, commit, dest = sys.argv[1:]
tree = subprocess.run(["git", "--git-dir", git, "ls-tree", "-r", "-z", commit],
                      check=True, capture_output=True).stdout.split(b"\0")
entries = [e.split(b"\t", 1) for e in tree if e]
cat = subprocess.Popen(["git", "--git-dir", git, "cat-file", "--batch"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
missing = []
for meta, path in entries:
    mode, kind, sha = meta.split()
    if kind != b"blob":
        continue
    cat.stdin.write(sha + b"\n"); cat.stdin.flush()
    head = cat.stdout.readline().split()
    if head[-1] == b"missing":
        missing.append(path.decode()); continue
    data = cat.stdout.read(int(head[2])); cat.stdout.read(1)
    p = os.path.join(dest, path.decode())
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    if mode == b"100755":
        os.chmod(p, 0o755)
print("missing:", " ".join(missing), file=sys.stderr)
PY
SRC="$OUT.tmp/src"

log "Bouncy Castle: Debian's 1.72 for all three jars (mixed versions stop the server)"
for dir in server/lib client/lib command/lib; do
  rm -f "$SRC/$dir"/bcprov-*.jar "$SRC/$dir"/bcpkix-*.jar "$SRC/$dir"/bcutil-*.jar
  cp /usr/share/java/bcprov.jar "$SRC/$dir/bcprov-jdk18on-1.78.1.jar"
  cp /usr/share/java/bcpkix.jar "$SRC/$dir/bcpkix-jdk18on-1.78.1.jar"
  cp /usr/share/java/bcutil.jar "$SRC/$dir/bcutil-jdk18on-1.78.1.jar"
done
cp /usr/share/java/sqlite-jdbc.jar "$SRC/server/lib/database/sqlite-jdbc-3.43.2.1.jar"
log "OpenJFX 11 from Debian (only to compile the client)"
tmpjfx="$(mktemp -d)"
for j in /usr/share/java/javafx-{base,graphics,controls,swing,web,media,fxml}.jar; do
  (cd "$tmpjfx" && unzip -qo "$j" -x 'META-INF/*')
done
(cd "$tmpjfx" && jar cf "$SRC/client/lib/openjfx.jar" .)
rm -rf "$tmpjfx"

log "mirth-vocab.jar, regenerated with the repository's own generator"
(cd "$SRC/generator" && ant -q dist-vocab)
cp "$SRC"/generator/vocab/dist/mirth-vocab-*.jar "$SRC/server/lib/mirth-vocab.jar"

log "loopback only, and no usage statistics (it reports at start by default)"
props="$SRC/server/conf/mirth.properties"
sed -i "s|^http.host *=.*|http.host = 127.0.0.1|; s|^https.host *=.*|https.host = 127.0.0.1|;
        s|^http.port *=.*|http.port = ${OIE_HTTP_PORT:-18080}|; s|^https.port *=.*|https.port = ${OIE_HTTPS_PORT:-18443}|" "$props"
# Usage statistics go to URL_CONNECT_SERVER: point it at a closed loopback port.
sed -i 's|"https://connect.mirthcorp.com"|"http://127.0.0.1:9"|' \
  "$SRC/server/src/com/mirth/connect/client/core/ConnectServiceUtil.java"

log "its own unit tests are left out of the build (some do not compile on Java 17)"
sed -i 's|<antcall target="test-run" />||' "$SRC/server/mirth-build.xml"

log "ant build, unsigned (signing needs a timestamp server); about 5 minutes"
(cd "$SRC/server" && ant -q -f mirth-build.xml -DdisableSigning=true)
rm -rf "$OUT" && mkdir -p "$OUT" && mv "$SRC/server/setup" "$OUT/setup" && rm -rf "$OUT.tmp"
echo "$OUT/setup"
