#!/bin/sh
# Builds the Debian packages (debian/) in a copy of the tree, OUT
# (default build/deb): dpkg-buildpackage cleans the tree it runs in and
# writes its results to the parent directory, neither of which should
# happen to a working tree.  The .deb, .buildinfo and .changes files land
# in OUT.  Run by `make deb`.
set -eu
out=${1:-build/deb}
cd "$(dirname "$0")/.."
version=$(cat VERSION)
latest=$(dpkg-parsechangelog -S Version)
if [ "$version" != "$latest" ]; then
	echo "deb: VERSION says $version but debian/changelog's latest entry" \
	    "is $latest: add an entry for $version (dch -v $version)" >&2
	exit 1
fi
src=$out/tgwebhookd-$version
rm -rf "$out"
mkdir -p "$src"
# The files git knows (as they are in the working tree), or, outside git,
# the tree without its build and dependency directories.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard |
	    tar --null -T - -cf - | tar -xf - -C "$src"
else
	tar --exclude=./build --exclude='./build-*' --exclude=./.git \
	    --exclude=node_modules --exclude=__pycache__ -cf - . |
	    tar -xf - -C "$src"
fi
cd "$src"
DEB_BUILD_OPTIONS="parallel=$(nproc) ${DEB_BUILD_OPTIONS:-}" \
    dpkg-buildpackage -b -us -uc
