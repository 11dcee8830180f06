import json,statistics as st,sys
# usage: pool.py label=glob ...
import glob
for arg in sys.argv[1:]:
    label,pat=arg.split('=')
    pool={}
    for f in sorted(glob.glob(pat)):
        d=json.load(open(f))
        for c in d['catch_up']:
            for r in c['runs']:
                pool.setdefault(c['workload'],[]).append(r)
    for w,rs in pool.items():
        e=[r['engine_cpu_seconds'] for r in rs]
        print(f"{label:8s} {w:12s} n={len(rs):2d} engine CPU/100k {st.median(e):.3f} ({min(e):.2f}-{max(e):.2f}) time {st.median([r['engine_seconds'] for r in rs]):.2f} walsender {st.median([r['engine_walsender_cpu_seconds'] for r in rs]):.2f} redis {st.median([r['redis_cpu_seconds'] for r in rs]):.2f} rss {st.median([r['engine_max_rss_bytes'] for r in rs])/1e6:.1f}")
