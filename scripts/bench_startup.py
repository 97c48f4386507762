"""Time a server start as a desktop client sees it: spawn `myrmex serve` over stdio on one data
directory, send initialize, then one tool call; 12 starts, the first 2 discarded.

Usage: python3 scripts/bench_startup.py path/to/myrmex
"""
import subprocess, time, json, sys, tempfile, statistics
bin=sys.argv[1]; d=tempfile.mkdtemp()
ts=[]
for i in range(12):
    t=time.perf_counter()
    p=subprocess.Popen([bin,"--data-dir",d,"serve"],stdin=subprocess.PIPE,stdout=subprocess.PIPE,stderr=subprocess.DEVNULL)
    p.stdin.write((json.dumps({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})+"\n").encode()); p.stdin.flush()
    p.stdout.readline(); t1=time.perf_counter()
    p.stdin.write((json.dumps({"jsonrpc":"2.0","method":"notifications/initialized"})+"\n").encode())
    p.stdin.write((json.dumps({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"list_workflows","arguments":{}}})+"\n").encode()); p.stdin.flush()
    p.stdout.readline(); t2=time.perf_counter()
    p.stdin.close(); p.wait()
    if i>=2: ts.append(((t1-t)*1000,(t2-t)*1000))
print("initialize ms: median %.1f (min %.1f max %.1f); first tool answer ms: median %.1f (min %.1f max %.1f)"%(statistics.median(a for a,_ in ts),min(a for a,_ in ts),max(a for a,_ in ts),statistics.median(b for _,b in ts),min(b for _,b in ts),max(b for _,b in ts)))
