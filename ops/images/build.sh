#!/usr/bin/env bash
# Builds the sandbox executor image (sandbox-executor:v1.0) without any container registry:
# debootstrap makes a minimal Debian root filesystem with the packages listed in
# ops/images/executor.packages, the script adds the unprivileged user `sandbox` (uid/gid 1000,
# home /workspace), strips apt lists, docs, man pages and locales, adds the executor agent
# (ops/images/agent/, speaking agent/PROTOCOL.md) under /opt/sandbox as the image's command, and
# `docker import`s the result, then checks that the agent answers a ping.
#
# Caching:
# - the image carries the label io.sandbox.build-hash, a hash of this script, the package list,
#   the suite, the architecture and the agent files; when the image already has the current
#   hash, the script exits at once;
# - the debootstrapped root filesystem (without the agent) is kept as a tarball in ops/.cache/
#   under a hash of only what shapes it (suite, architecture, package list and the functions
#   that make it), so a rebuild after `docker rmi` or a change of the agent only copies it,
#   appends /opt/sandbox and re-imports; downloaded .debs are kept there too, so a changed
#   package list does not download everything again.
#
# Needs root (debootstrap, chroot) and a running Docker engine; install-deps.sh installs
# debootstrap. Prints the time of each step.
#
# Usage: ops/images/build.sh
# Env:
#   SANDBOX_EXECUTOR_IMAGE  image name (default sandbox-executor:v1.0)
#   SANDBOX_IMAGE_SUITE     Debian suite to bootstrap (default bookworm)
#   DEBIAN_MIRROR           mirror URL (default: the machine's apt source for the suite,
#                           else http://deb.debian.org/debian)
#   SANDBOX_CACHE_DIR       cache folder (default ops/.cache)
#   SANDBOX_IMAGE_REBUILD=1 ignore both caches (the .debs are still reused)
#   TMPDIR                  where the root filesystem is assembled (default /var/tmp)
set -euo pipefail
# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

IMAGE="${SANDBOX_EXECUTOR_IMAGE:-sandbox-executor:v1.0}"
SUITE="${SANDBOX_IMAGE_SUITE:-bookworm}"
PACKAGES_FILE="$SANDBOX_OPS_DIR/images/executor.packages"
AGENT_DIR="$SANDBOX_OPS_DIR/images/agent"
# Installed into /opt/sandbox; agent.py is the image's command.
AGENT_FILES=(agent.py kernel.py)
PROTOCOL_VERSION=1
CACHE_DIR="${SANDBOX_CACHE_DIR:-$SANDBOX_OPS_DIR/.cache}"
REBUILD="${SANDBOX_IMAGE_REBUILD:-0}"
HASH_LABEL="io.sandbox.build-hash"
SANDBOX_UID=1000

total_start="$(now_us)"

# The package list, without comments and blank lines, one per line, sorted.
packages() {
    [[ -r "$PACKAGES_FILE" ]] || die "missing package list $PACKAGES_FILE"
    sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$PACKAGES_FILE" | sort -u
}

# Key of the cached root filesystem: what debootstrap, configure_rootfs and strip_rootfs get
# and do (declare -f prints the functions' current bodies, so editing one changes the key).
rootfs_hash() {
    {
        printf 'suite=%s\narch=%s\n' "$SUITE" "$(dpkg --print-architecture)"
        printf -- '--- packages\n'
        packages
        printf -- '--- functions\n'
        declare -f packages run_debootstrap configure_rootfs strip_rootfs
    } | sha256sum | cut -d ' ' -f 1
}

# Label of the finished image: the root filesystem, this whole script and the agent files.
build_hash() {
    local file
    {
        printf 'rootfs=%s\n' "$(rootfs_hash)"
        printf -- '--- script\n'
        cat "${BASH_SOURCE[0]}"
        for file in "${AGENT_FILES[@]}"; do
            printf -- '--- agent/%s\n' "$file"
            cat "$AGENT_DIR/$file"
        done
    } | sha256sum | cut -d ' ' -f 1
}

image_hash() {
    docker image inspect --format "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$IMAGE" 2>/dev/null || true
}

# The machine's apt mirror for $SUITE (deb822 .sources first, then one-line .list files).
debian_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
        printf '%s\n' "$DEBIAN_MIRROR"
        return
    fi
    local found="" file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -r "$file" ]] || continue
        found="$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[[:space:]]*#/) continue
                    key = tolower(line); sub(/:.*/, "", key)
                    value = line; sub(/^[^:]*:[[:space:]]*/, "", value)
                    if (key == "types") types = " " value " "
                    else if (key == "uris") uris = value
                    else if (key == "suites") suites = " " value " "
                    else if (key == "enabled") enabled = tolower(value)
                }
                if (enabled != "no" && types ~ / deb / && suites ~ (" " suite " ")) {
                    split(uris, list, /[[:space:]]+/)
                    if (list[1] ~ /^(https?|file):/) { print list[1]; exit }
                }
            }' "$file")"
        [[ -n "$found" ]] && break
    done
    if [[ -z "$found" ]]; then
        for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -r "$file" ]] || continue
            found="$(awk -v suite="$SUITE" '
                $1 == "deb" {
                    i = 2
                    if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == suite && $i ~ /^(https?|file):/) { print $i; exit }
                }' "$file")"
            [[ -n "$found" ]] && break
        done
    fi
    printf '%s\n' "${found:-http://deb.debian.org/debian}"
}

workdir=""
tmp_tar=""
cleanup() {
    if [[ -n "$tmp_tar" ]]; then
        rm -f -- "$tmp_tar"
    fi
    [[ -n "$workdir" && -d "$workdir" ]] || return 0
    # An interrupted debootstrap can leave proc/sys mounted inside the root filesystem.
    local mount_point
    while read -r mount_point; do
        umount -l "$mount_point" 2>/dev/null || warn "could not unmount $mount_point"
    done < <(awk -v root="$workdir/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system -- "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_debootstrap() {
    local rootfs="$1" mirror="$2" include log="$workdir/debootstrap.log"
    include="$(packages | paste -sd, -)"
    mkdir -p "$CACHE_DIR/debs"
    info "debootstrap --variant=minbase --include=$include $SUITE from $mirror (takes a few minutes)"
    if ! debootstrap --variant=minbase --include="$include" --cache-dir="$CACHE_DIR/debs" \
        "$SUITE" "$rootfs" "$mirror" >"$log" 2>&1 </dev/null; then
        warn "debootstrap failed; the end of its output:"
        tail -n 40 "$log" >&2
        if [[ -r "$rootfs/debootstrap/debootstrap.log" ]]; then
            tail -n 20 "$rootfs/debootstrap/debootstrap.log" >&2
        fi
        return 1
    fi
}

configure_rootfs() {
    local rootfs="$1"
    chroot "$rootfs" groupadd --gid "$SANDBOX_UID" sandbox
    chroot "$rootfs" useradd --uid "$SANDBOX_UID" --gid "$SANDBOX_UID" --home-dir /workspace \
        --no-create-home --shell /bin/bash --comment "sandbox user" sandbox
    install -d -m 0755 -o "$SANDBOX_UID" -g "$SANDBOX_UID" "$rootfs/workspace"
    # Docker provides these at run time; do not bake in the build machine's.
    rm -f "$rootfs/etc/hostname"
    : >"$rootfs/etc/resolv.conf"
    # Packages installed later in the image skip docs too.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-sandbox-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
EOF
    # Every listed package must be installed (a typo would otherwise only show at run time).
    local package
    while read -r package; do
        package_installed "$package" "$rootfs" ||
            die "package $package from $PACKAGES_FILE is not installed in the image"
    done < <(packages)
    # env -i: the build machine's variables (say, NODE_EXTRA_CA_CERTS) must not leak in.
    chroot "$rootfs" env -i PATH=/usr/bin:/bin python3 -c 'print(6 * 7)' | grep -qx 42 ||
        die "python3 does not run in the new image"
    chroot "$rootfs" env -i PATH=/usr/bin:/bin node -e 'console.log(6 * 7)' | grep -qx 42 ||
        die "node does not run in the new image"
}

strip_rootfs() {
    local rootfs="$1"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/debconf/*-old \
        "$rootfs"/var/lib/dpkg/*-old "$rootfs"/usr/share/man "$rootfs"/usr/share/info \
        "$rootfs"/usr/share/lintian "$rootfs"/usr/share/locale/* "$rootfs"/tmp/* \
        "$rootfs"/var/tmp/*
    mkdir -p "$rootfs/var/lib/apt/lists/partial"
    # Docs go, their copyright notices stay.
    find "$rootfs/usr/share/doc" -mindepth 1 \( -type f -o -type l \) ! -name copyright -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -depth -type d -empty -delete
    find "$rootfs/var/log" -type f -delete
}

# add_agent ROOTFS_TAR OUT_TAR: a copy of ROOTFS_TAR with /opt/sandbox (the agent files)
# appended, owned by root and read-only for the sandbox user.
add_agent() {
    local rootfs_tar="$1" out="$2" stage="$workdir/agent" file
    mkdir -p "$stage/opt"
    install -d -m 0755 "$stage/opt/sandbox"
    for file in "${AGENT_FILES[@]}"; do
        install -m 0644 "$AGENT_DIR/$file" "$stage/opt/sandbox/$file"
    done
    cp -- "$rootfs_tar" "$out"
    tar -C "$stage" --numeric-owner --owner=0 --group=0 -rf "$out" ./opt/sandbox
}

# The image's command is the agent: it must answer a ping (it exits when its stdin ends).
check_agent() {
    local answer
    answer="$(printf '{"op":"ping","req":1}\n' | docker run --rm -i --network none "$IMAGE" 2>&1)"
    grep -q '"req":1,"ok":true,"protocol":1' <<<"$answer" || die "the agent in $IMAGE does not answer a ping: $answer"
}

import_image() {
    local tarball="$1" hash="$2"
    docker import \
        --change 'CMD ["python3","-u","/opt/sandbox/agent.py"]' \
        --change 'WORKDIR /workspace' \
        --change 'USER sandbox' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PYTHONUNBUFFERED=1' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "LABEL $HASH_LABEL=$hash" \
        --change "LABEL io.sandbox.executor-protocol=$PROTOCOL_VERSION" \
        --message "built by ops/images/build.sh from $(basename "$PACKAGES_FILE")" \
        "$tarball" "$IMAGE" >/dev/null
}

main() {
    require_docker
    local hash
    hash="$(build_hash)"
    if [[ "$REBUILD" != 1 && "$(image_hash)" == "$hash" ]]; then
        info "$IMAGE is up to date (build hash ${hash:0:16}) in $(elapsed_since "$total_start")"
        return 0
    fi
    require_root "building $IMAGE"
    mkdir -p "$CACHE_DIR"

    # One build at a time (up.sh and test.sh may run side by side).
    exec 9>"$CACHE_DIR/executor.lock"
    if ! flock -n 9; then
        info "another build of $IMAGE is running; waiting for it"
        flock 9
    fi
    if [[ "$REBUILD" != 1 && "$(image_hash)" == "$hash" ]]; then
        info "$IMAGE was built meanwhile (build hash ${hash:0:16})"
        return 0
    fi

    workdir="$(mktemp -d "${TMPDIR:-/var/tmp}/sandbox-executor.XXXXXX")"
    local rootfs_key cached
    rootfs_key="$(rootfs_hash)"
    cached="$CACHE_DIR/executor-rootfs-${rootfs_key:0:16}.tar"
    if [[ "$REBUILD" != 1 && -s "$cached" ]]; then
        info "reusing the cached root filesystem $cached (no debootstrap)"
    else
        require_cmd debootstrap "run ops/install-deps.sh (apt-get install debootstrap)"
        local mirror rootfs
        mirror="$(debian_mirror)"
        rootfs="$workdir/rootfs"
        run_step "debootstrap $SUITE" run_debootstrap "$rootfs" "$mirror"
        run_step "configure the root filesystem" configure_rootfs "$rootfs"
        run_step "strip apt lists, docs, man pages, locales" strip_rootfs "$rootfs"
        tmp_tar="$cached.tmp.$$"
        run_step "pack the root filesystem" tar -C "$rootfs" --numeric-owner -cf "$tmp_tar" .
        mv -f -- "$tmp_tar" "$cached"
        tmp_tar=""
    fi

    local old_id new_id image_tar="$workdir/image.tar"
    run_step "add the agent (/opt/sandbox)" add_agent "$cached" "$image_tar"
    old_id="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
    run_step "docker import $IMAGE" import_image "$image_tar" "$hash"
    new_id="$(docker image inspect --format '{{.Id}}' "$IMAGE")"
    if ! run_step "check the agent" check_agent; then
        # Untag it, so the next run builds again instead of calling this image up to date.
        docker image rm "$IMAGE" >/dev/null 2>&1 || true
        die "$IMAGE failed its check"
    fi
    if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
        # The previous build is now untagged; drop it unless a container still uses it.
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
    # Only the current root filesystem is worth keeping.
    local stale
    for stale in "$CACHE_DIR"/executor-rootfs-*.tar; do
        if [[ -e "$stale" && "$stale" != "$cached" ]]; then
            rm -f -- "$stale"
        fi
    done

    local size
    size="$(docker image inspect --format '{{.Size}}' "$IMAGE")"
    info "$IMAGE built: $((size / 1000000)) MB, build hash ${hash:0:16}, total $(elapsed_since "$total_start")"
}

main "$@"
