# Sourced by run.sh and compare-builds.sh: a scratch directory OUT removed on exit, and
# when ENGINES names "nbd", `nbdkit file $IMG` serving on a socket in it at URI until exit.
OUT=$(mktemp -d); NBDKIT=""
trap '[ -n "$NBDKIT" ] && kill "$NBDKIT"; rm -rf "$OUT"' EXIT
URI="nbd+unix:///?socket=$OUT/nbd.sock"
case " $ENGINES " in *" nbd "*)
  nbdkit -f -U "$OUT/nbd.sock" file "$IMG" & NBDKIT=$!
  i=0; until nbdinfo --size "$URI" >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 300 ] || { echo "nbdkit did not start" >&2; exit 1; }; sleep 0.1; done ;;
esac
