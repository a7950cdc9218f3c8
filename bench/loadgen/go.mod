module mytpe-relay/bench/loadgen

go 1.22
