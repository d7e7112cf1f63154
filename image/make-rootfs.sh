#!/bin/sh
# Assembles a minimal root file system from Debian packages installed in the build stage, for
# an image FROM scratch: the files of PACKAGEs and of everything they depend on, except the
# packages in $DROP (and what only they pull in), plus the paths given with --copy.
#
# Usage (in a Dockerfile stage FROM debian:bookworm-slim, packages already installed):
#   DROP="perl-base apt ..." sh make-rootfs.sh DEST [--copy PATH]... PACKAGE...
#
# DROP lists packages that run only while installing packages (maintainer scripts, package
# management): their files are left out. The result has:
#   - the merged-/usr layout of the build stage (bin, sbin, lib* as links into usr/);
#   - /etc/passwd, /etc/group and /etc/ld.so.cache of the build stage (users created by the
#     packages' maintainer scripts are there);
#   - /etc/ssl/certs as update-ca-certificates made it, when ca-certificates is kept;
#   - var/lib/dpkg/status with the kept packages only, so image scanners see exactly what is
#     inside;
#   - no documentation, translations or glibc gconv modules (iconv charsets; nothing here uses
#     them).
# Used by image/Dockerfile and operator/Dockerfile; POSIX sh, architecture-independent.
set -eu

dest="$1"
shift
copies=""
while [ "$#" -gt 0 ] && [ "$1" = "--copy" ]; do
    copies="$copies $2"
    shift 2
done
[ "$#" -gt 0 ] || { echo "usage: make-rootfs.sh DEST [--copy PATH]... PACKAGE..." >&2; exit 2; }
DROP=" ${DROP:-} "

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# The dependency closure of the arguments, minus DROP: for each dependency, the first
# installed alternative; virtual packages with no installed provider are skipped.
closure() {
    todo="$*"
    seen=" "
    while [ -n "$todo" ]; do
        # shellcheck disable=SC2086 # a list of package names
        set -- $todo
        pkg="$1"
        shift
        todo="$*"
        case "$seen" in *" $pkg "*) continue ;; esac
        case "$DROP" in *" $pkg "*) continue ;; esac
        installed "$pkg" || { echo "make-rootfs: $pkg is not installed" >&2; exit 1; }
        seen="$seen$pkg "
        deps="$(dpkg-query -W -f='${Pre-Depends},${Depends}' "$pkg" |
            tr ',' '\n' | sed 's/([^)]*)//g; s/:[a-z0-9]*//g; s/ //g' | grep -v '^$' || true)"
        for alternatives in $deps; do
            for alt in $(echo "$alternatives" | tr '|' ' '); do
                if installed "$alt"; then
                    todo="$todo $alt"
                    break
                fi
            done
        done
    done
    echo "$seen"
}

# A path with its directories resolved (lib/x86_64-linux-gnu/... -> usr/lib/...), so the
# archive below never writes through or over the merged-/usr links.
canonical() {
    dir="$(readlink -f "$(dirname "$1")")"
    echo "${dir%/}/$(basename "$1")"
}

packages="$(closure "$@")"
echo "make-rootfs: packages: $packages" >&2

list="$(mktemp)"
{
    for pkg in $packages; do
        dpkg-query -L "$pkg"
    done
    for path in $copies; do
        find "$path"
    done
    for path in /etc/passwd /etc/group /etc/ld.so.cache /etc/nsswitch.conf; do
        [ -e "$path" ] && echo "$path"
    done
    case "$packages" in *" ca-certificates "*) find /etc/ssl/certs ;; esac
} | while read -r path; do
    # Only what exists (dpkg lists diverted and path-excluded files too), never the top-level
    # links of the merged /usr (recreated below) nor documentation.
    [ -e "$path" ] || [ -L "$path" ] || continue
    case "$path" in
        / | /. | /bin | /sbin | /lib | /lib32 | /lib64 | /libx32 | /usr/share/doc | /usr/share/doc/* | \
            /usr/share/man/* | /usr/share/info/* | /usr/share/locale/* | /usr/share/lintian/* | \
            */gconv | */gconv/*) continue ;;
    esac
    # Relative to /, as tar -C / reads them.
    canonical "$path" | sed 's|^/||'
done | sort -u >"$list"

mkdir -p "$dest"
# The merged-/usr links, as in the build stage.
for link in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$link" ]; then
        ln -sfn "$(readlink "/$link")" "$dest/$link"
    fi
done
# Directories as they are (modes, owners), without recursing: the list names every file.
tar -C / --no-recursion -cf - -T "$list" | tar -C "$dest" -xpf -
rm -f "$list"

# What a container expects to find.
mkdir -p "$dest/tmp" "$dest/var/tmp" "$dest/run" "$dest/root" "$dest/proc" "$dest/sys" "$dest/dev"
chmod 1777 "$dest/tmp" "$dest/var/tmp"
chmod 700 "$dest/root"
mkdir -p "$dest/var/lib/dpkg"
# shellcheck disable=SC2086 # one argument per package
dpkg-query -s $packages >"$dest/var/lib/dpkg/status"
