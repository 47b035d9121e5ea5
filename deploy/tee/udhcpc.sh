#!/bin/sh
# busybox udhcpc hook: apply the lease (address, default route, resolver).
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    : > /run/resolv.conf  # /etc/resolv.conf links here: the verity root is read-only
    for d in $dns; do echo "nameserver $d" >> /run/resolv.conf; done
    ;;
esac
