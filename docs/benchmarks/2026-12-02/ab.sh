#!/bin/bash
# Alternate two server variants (A, B), N rounds: server on CPU 0, wrk on CPU 1.
# usage: ab.sh N DURATION "A args" "B args"   (prints req/s per round and the medians)
N=$1; D=$2; A=$3; B=$4
cd "$(dirname "$0")/../../.."
declare -a RA RB
for i in $(seq 1 $N); do
  for v in A B; do
    args=$A; [ $v = B ] && args=$B
    port=$((18000 + RANDOM % 2000))
    taskset -c 0 .venv/bin/python -m server --port $port --log-level info $args > /tmp/ab-$v.out 2>/tmp/ab-$v.err &
    pid=$!
    for t in $(seq 50); do grep -q listening /tmp/ab-$v.out 2>/dev/null && break; sleep 0.1; done
    taskset -c 1 wrk -t1 -c100 -d2s http://127.0.0.1:$port/ >/dev/null 2>&1
    r=$(taskset -c 1 wrk -t1 -c100 -d${D}s http://127.0.0.1:$port/ | awk '/Requests\/sec/{print $2}')
    kill -TERM $pid; wait $pid 2>/dev/null
    lines=$(grep -c '" 200 ' /tmp/ab-$v.out)
    echo "round $i $v: $r req/s (access lines: $lines)"
    [ $v = A ] && RA+=($r) || RB+=($r)
  done
done
python3 -c "
import statistics,sys
a=[float(x) for x in '${RA[*]}'.split()]; b=[float(x) for x in '${RB[*]}'.split()]
print(f'A: median {statistics.median(a):,.0f} range {min(a):,.0f}-{max(a):,.0f}')
print(f'B: median {statistics.median(b):,.0f} range {min(b):,.0f}-{max(b):,.0f}')
print('B/A per round:', ' '.join(f'{y/x:.3f}' for x,y in zip(a,b)))
"
