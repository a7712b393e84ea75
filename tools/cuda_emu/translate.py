"""Rewrites every `kernel<<<grid, block>>>(args)` launch of a .cu file into
`emu_launch(grid, block, [&] { kernel(args); })` for tools/cuda_emu (see README.md).
Usage: translate.py IN.cu OUT.cpp"""
import re, sys
src = open(sys.argv[1]).read()
out = []
i = 0
while True:
    j = src.find('<<<', i)
    if j < 0:
        out.append(src[i:]); break
    # kernel name: walk back over identifier chars and template args
    k = j
    depth = 0
    while k > 0:
        ch = src[k-1]
        if ch == '>': depth += 1
        elif ch == '<': depth -= 1
        elif depth == 0 and not (ch.isalnum() or ch in '_:'): break
        k -= 1
    name = src[k:j]
    e = src.find('>>>', j)
    cfg, d0, cur = [], 0, ''
    for ch in src[j+3:e]:
        if ch == '(': d0 += 1
        if ch == ')': d0 -= 1
        if ch == ',' and d0 == 0: cfg.append(cur.strip()); cur = ''
        else: cur += ch
    cfg.append(cur.strip())
    assert src[e+3] == '(', src[e:e+20]
    d = 0; m = e + 3
    while True:
        if src[m] == '(': d += 1
        elif src[m] == ')':
            d -= 1
            if d == 0: break
        m += 1
    args = src[e+4:m]
    out.append(src[i:k])
    out.append(f'emu_launch({cfg[0]}, {cfg[1]}, [&] {{ {name}({args}); }})')
    i = m + 1
open(sys.argv[2], 'w').write(''.join(out))
