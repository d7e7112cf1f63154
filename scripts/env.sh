# Sourced by the scripts: toolchains installed the usual way (rustup, the Go tarball) are found
# even from a shell that did not set PATH for them, such as CI's.
for dir in "$HOME/.cargo/bin" /usr/local/go/bin; do
    case ":$PATH:" in
        *":$dir:"*) ;;
        *) [ -d "$dir" ] && PATH="$dir:$PATH" ;;
    esac
done
export PATH
export GOTOOLCHAIN=local
