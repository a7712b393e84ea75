"""Per-kernel ptxas table for csrc/cuda/*.cu: registers, spills, shared memory, and the
integer divisions / remainders left in the PTX, 64-bit (each a ~20-instruction sequence
with a slow-path call on the card) and 32-bit (fewer instructions, no call). Compiles each file to PTX once and runs ptxas -v
on it; needs nvcc and ptxas, no GPU.

    python tools/ptxas_table.py [FILES...] [--arch 90] [--nvcc nvcc]

Prints a markdown table. Functions that are not kernels (__noinline__ device
functions) are listed too, marked (func).
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

DIVREM = re.compile(r'^\s*(?:@%p\d+\s+)?(?:div|rem)\.[su]64\b', re.M)
DIVREM32 = re.compile(r'^\s*(?:@%p\d+\s+)?(?:div|rem)\.[su]32\b', re.M)


def demangle(names):
    out = subprocess.run(['c++filt'], input='\n'.join(names), capture_output=True, text=True).stdout
    return out.split('\n')[:len(names)]


def short(name):
    # void fastconv::cuda::(anonymous namespace)::sobel_kernel<float>(Params, ...) -> sobel_kernel<float>
    name = name.replace('(anonymous namespace)', 'anon')
    depth, cut, last = 0, len(name), 0
    for i, ch in enumerate(name):
        depth += ch == '<'
        depth -= ch == '>'
        if depth == 0 and ch == '(':
            cut = i
            break
        if depth == 0 and name.startswith('::', i):
            last = i + 2
    name = name[last:cut]
    for k, v in (('(fastconv::Layout)0', 'NCHW'), ('(fastconv::Layout)1', 'NHWC'),
                 ('fastconv::Layout::', ''), ('fastconv::', '')):
        name = name.replace(k, v)
    return name


def table(path, arch, nvcc, csrc):
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, 'k.ptx')
        subprocess.run([nvcc, '-O3', '-std=c++17', '-I', csrc, f'-arch=compute_{arch}', '--ptx',
                        path, '-o', ptx], check=True)
        text = open(ptx).read()
        res = subprocess.run(['ptxas', f'-arch=sm_{arch}', '-O3', '-v', ptx, '-o',
                              os.path.join(tmp, 'k.cubin')], capture_output=True, text=True,
                             check=True).stderr
    # div/rem per function body in the PTX.
    counts = {}
    for m in re.finditer(r'^(?:\.visible\s+|\.weak\s+)?\.(entry|func)\s+(?:\([^)]*\)\s*)?(\w+)', text, re.M):
        start = m.end()
        nxt = re.search(r'^(?:\.visible\s+|\.weak\s+)?\.(?:entry|func)\s', text[start:], re.M)
        body = text[start:start + nxt.start()] if nxt else text[start:]
        if '{' not in body:
            continue  # a declaration
        counts[m.group(2)] = (m.group(1), f'{len(DIVREM.findall(body))} / {len(DIVREM32.findall(body))}')
    rows = {}
    cur = None
    for line in res.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?(\w+)'?", line)
        if m:
            cur = m.group(1)
            rows.setdefault(cur, {})
            continue
        m = re.search(r'(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads', line)
        if m and cur:
            rows[cur].update(stack=m.group(1), spill=f'{m.group(2)}/{m.group(3)}')
        m = re.search(r'Used (\d+) registers', line)
        if m and cur:
            rows[cur]['regs'] = m.group(1)
            s = re.search(r'(\d+) bytes smem', line)
            rows[cur]['smem'] = s.group(1) if s else '0'
    names = [n for n in rows if 'regs' in rows[n]]
    names += [n for n, (kind, _) in counts.items() if kind == 'func']
    out = []
    for n, d in zip(names, demangle(names)):
        kind, dr = counts.get(n, ('entry', '? / ?'))
        label = short(d) + (' (func)' if kind == 'func' else '')
        r = rows.get(n, {})
        out.append((os.path.basename(path)[:-3], label, r.get('regs', '-'), r.get('spill', '0/0'),
                    r.get('smem', '0'), dr))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    here = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join(here, '..', 'csrc')
    ap.add_argument('files', nargs='*', default=sorted(glob.glob(os.path.join(csrc, 'cuda', '*.cu'))))
    ap.add_argument('--arch', default='90')
    ap.add_argument('--nvcc', default='nvcc')
    a = ap.parse_args()
    print('| file | kernel | regs | spill st/ld (B) | smem (B) | div/rem in PTX: 64-bit / 32-bit |')
    print('|---|---|---|---|---|---|')
    for f in a.files:
        for row in table(f, a.arch, a.nvcc, csrc):
            print('| ' + ' | '.join(map(str, row)) + ' |')
        sys.stdout.flush()


if __name__ == '__main__':
    main()
