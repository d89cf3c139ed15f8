#!/bin/bash
# Builds the root filesystem archive of the PostgreSQL image built by the
# postgres_image role: Debian SUITE with SUITE-updates and SUITE-security,
# upgraded to their newest packages, with PACKAGES installed.
#
# Usage: build-rootfs.sh OUT_DIR NAME
# Environment (all required):
#   SUITE            Debian suite, e.g. bookworm
#   MIRROR           Debian mirror for SUITE and SUITE-updates
#   SECURITY_MIRROR  Debian security mirror for SUITE-security
#   KEYRING          OpenPGP keyring that must have signed every suite's Release file
#   PACKAGES         packages to install, separated by spaces
#   PG_MAJOR         PostgreSQL major version in PACKAGES
#
# On success prints the archive's path, OUT_DIR/NAME-<UTC time of the package
# lists>.tar; that time (YYYYmmddTHHMMSSZ) is when `apt-get update` fetched
# the lists. On failure exits 1, keeps the whole log as OUT_DIR/NAME.failed.log
# and prints its path and last lines on stderr. Nothing here trusts an unsigned
# or badly signed repository: debootstrap checks the Release signature with
# KEYRING, and apt inside the root filesystem checks the three suites with a
# copy of it.
set -Eeuo pipefail

out=$1 name=$2
: "${SUITE:?}" "${MIRROR:?}" "${SECURITY_MIRROR:?}" "${KEYRING:?}" "${PACKAGES:?}" "${PG_MAJOR:?}"
part="$out/$name.partial"
log="$out/$name.log"
failed="$out/$name.failed.log"

unmount_all() {
	local m
	for m in proc dev; do
		if mountpoint -q "$part/$m"; then umount "$part/$m" || umount -l "$part/$m"; fi
	done
}

fail() {
	trap - ERR
	unmount_all || true
	rm -rf --one-file-system "$part" "$part.tar"
	mv -f "$log" "$failed"
	{
		echo "$1; the full log is kept in $failed. Its last lines:"
		tail -n 25 "$failed"
	} >&2
	exit 1
}
trap 'fail "the build stopped at: $BASH_COMMAND"' ERR
trap unmount_all EXIT

# Runs one step, its output going to the log; a failing step ends the build.
step() {
	local what=$1
	shift
	printf '\n== %s: %s\n' "$(date -u +%H:%M:%S)" "$what" >> "$log"
	"$@" >> "$log" 2>&1 || fail "$what failed"
}

in_root() {
	chroot "$part" /usr/bin/env -i DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
		PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# Leftovers of an interrupted run are redone from nothing.
unmount_all
rm -rf --one-file-system "$part" "$part.tar" "$log"
: > "$log"
[ -r "$KEYRING" ] || fail "the keyring $KEYRING is not a readable file"

# The base system from SUITE. --keyring makes debootstrap verify the Release
# file's signature (and through it every package's hash); it fails on a bad one.
step "debootstrap of $SUITE from $MIRROR (signatures checked with $KEYRING)" \
	debootstrap --variant=minbase --keyring="$KEYRING" --include=ca-certificates \
	"$SUITE" "$part" "$MIRROR"

# apt inside checks the same signatures, with the same keyring.
install -D -m 0644 "$KEYRING" "$part/etc/apt/keyrings/postgres-image-archive.gpg"
signed="[signed-by=/etc/apt/keyrings/postgres-image-archive.gpg]"
cat > "$part/etc/apt/sources.list" <<EOF
deb $signed $MIRROR $SUITE main
deb $signed $MIRROR $SUITE-updates main
deb $signed $SECURITY_MIRROR $SUITE-security main
EOF
# Packages must not start services inside the build.
printf '#!/bin/sh\nexit 101\n' > "$part/usr/sbin/policy-rc.d"
chmod 0755 "$part/usr/sbin/policy-rc.d"
mount -t proc proc "$part/proc"
[ -c "$part/dev/null" ] || mount --bind /dev "$part/dev"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
before=$(wc -l < "$log")
step "apt-get update of $SUITE, $SUITE-updates and $SUITE-security" in_root apt-get update
# apt-get update exits 0 on some fetch errors: every suite's signed lists must be there.
for s in "$SUITE" "$SUITE-updates" "$SUITE-security"; do
	compgen -G "$part/var/lib/apt/lists/*_dists_${s}_InRelease" > /dev/null \
		|| fail "apt-get update brought no signed lists for $s"
done
if grep -Eq '^(W|E|Err):' < <(tail -n "+$((before + 1))" "$log"); then fail "apt-get update reported errors or warnings"; fi
# The postgres user and group get uid/gid 999 (as in the official image) before any
# package creates them: files the Docker host writes for the server (pgBackRest's
# configuration, PgBouncer's) can then be owned by a known id, mode 0600.
step "creation of the postgres user (uid 999)" in_root sh -c \
	'groupadd --system --gid 999 postgres && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/bash postgres'
step "apt-get dist-upgrade" in_root apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade
# shellcheck disable=SC2086 # PACKAGES is a list of words
step "apt-get install of $PACKAGES" in_root apt-get -y --no-install-recommends -o Dpkg::Options::=--force-confold install $PACKAGES
step "apt-get clean" in_root apt-get clean
unmount_all
rm -f "$part/usr/sbin/policy-rc.d"

# Debian's package creates a cluster at install; the image creates its own in PGDATA.
rm -rf "$part/etc/postgresql/$PG_MAJOR/main" "$part/var/lib/postgresql/$PG_MAJOR/main"
rm -rf "$part"/var/cache/apt/archives/*.deb "$part"/var/lib/apt/lists/* \
	"$part"/usr/share/doc/* "$part"/usr/share/man/* "$part"/usr/share/info/*
# Listen on every interface of the container; pg_hba.conf decides who gets in.
conf="$part/usr/share/postgresql/$PG_MAJOR/postgresql.conf.sample"
sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$conf"
grep -q "^listen_addresses = '\*'" "$conf" || fail "listen_addresses not set in $conf"

step "archive of the root filesystem" tar -C "$part" --numeric-owner \
	--exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$part.tar" .
mv "$part.tar" "$out/$name-$stamp.tar"
rm -rf --one-file-system "$part" "$log" "$failed"
echo "$out/$name-$stamp.tar"
