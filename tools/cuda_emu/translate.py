"""Rewrites a .cu or .cuh file of csrc/cuda for tools/cuda_emu (see README.md).
Usage: translate.py IN OUT

- `kernel<<<grid, block[, shmem[, stream]]>>>(args)` becomes
  `emu_launch("kernel", &kernel, grid, block, shmem, [&] { kernel(args); })`. grid and
  block are dim3 (or integers); shmem is the launch's dynamic shared-memory size in
  bytes. The launch runs at once, so the stream only orders it after the work already
  done.
- `__shared__ [__align__(n)] T name[dims];` and `__shared__ T name;` become a reference
  to an object in the emulator's per-block shared arena (`emu::shared`), which starts
  each block as 0xFF bytes; `extern __shared__ [__align__(n)] T name[];` becomes a
  pointer to the launch's dynamic shared memory (`emu::dynamic`). Any other use of
  `__shared__` (an initializer, an extern array with a size, a declaration over several
  lines or of several names) is refused rather than silently mistranslated.
Line numbers are kept (a `#line` directive names the source, and a rewritten launch
keeps its newlines), so sanitizer and emulator reports point into csrc/cuda."""
import os
import re
import sys


def fail(path, src, pos, why):
    line = src.count('\n', 0, pos) + 1
    sys.exit(f'{path}:{line}: translate.py: {why}')


def split_top(text):
    """Splits text at the commas outside parentheses, brackets and angle brackets."""
    parts, depth, cur = [], 0, ''
    for ch in text:
        if ch in '([<':
            depth += 1
        elif ch in ')]>':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur.strip())
            cur = ''
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def launches(path, src):
    out, i = [], 0
    while True:
        j = src.find('<<<', i)
        if j < 0:
            out.append(src[i:])
            return ''.join(out)
        # kernel name: walk back over identifier chars and template args
        k, depth = j, 0
        while k > 0:
            ch = src[k - 1]
            if ch == '>':
                depth += 1
            elif ch == '<':
                depth -= 1
            elif depth == 0 and not (ch.isalnum() or ch in '_:'):
                break
            k -= 1
        name = src[k:j]
        e = src.find('>>>', j)
        cfg = split_top(src[j + 3:e])
        if not 2 <= len(cfg) <= 4:
            fail(path, src, j, f'launch of {name} with {len(cfg)} configuration arguments')
        shmem = cfg[2] if len(cfg) >= 3 else '0'
        if src[e + 3] != '(':
            fail(path, src, e, 'launch without an argument list')
        d, m = 0, e + 3
        while True:
            if src[m] == '(':
                d += 1
            elif src[m] == ')':
                d -= 1
                if d == 0:
                    break
            m += 1
        args = src[e + 4:m]
        out.append(src[i:k])
        out.append(f'emu_launch("{name}", reinterpret_cast<const void*>(&{name}), dim3({cfg[0]}), '
                   f'dim3({cfg[1]}), size_t({shmem}), [&] {{ {name}({args}); }})')
        out.append('\n' * src.count('\n', k, m + 1))
        i = m + 1


ALIGN = r'(?:(?:__align__|alignas)\s*\(\s*(?P<align>\d+)\s*\)\s+)?'
_T = r'[A-Za-z_][\w:]*(?:\s*<[^;{}]*?>)?'
TYPE = r'(?P<type>' + _T + r'(?:\s+' + _T + r')*?)'
SHARED = re.compile(r'__shared__\s+' + ALIGN + TYPE + r'\s+(?P<name>[A-Za-z_]\w*)\s*'
                    r'(?P<dims>(?:\[[^\]\n]+\]\s*)*);')
EXTERN = re.compile(r'extern\s+__shared__\s+' + ALIGN + TYPE + r'\s+(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;')


def shared(path, src):
    def static(m):
        t, name, dims = m['type'], m['name'], re.sub(r'\s+', '', m['dims'])
        align = f', {m["align"]}' if m['align'] else ''
        return (f'static ::emu::SharedSlot emu_slot_{name}; '
                f'auto& {name} = ::emu::shared<{t}{dims}{align}>(emu_slot_{name}, "{name}", __LINE__);')

    def dynamic(m):
        t, name = m['type'], m['name']
        align = m['align'] or f'alignof({t})'
        return f'{t}* const {name} = ::emu::dynamic<{t}>({align}, "{name}", __LINE__);'

    for m in re.finditer(r'extern\s+__shared__', src):
        if not EXTERN.match(src, m.start()):
            fail(path, src, m.start(), 'an extern __shared__ declaration the emulator does not '
                 'model (only `extern __shared__ [__align__(n)] T name[];` is: the size is the '
                 "launch's)")
    out = SHARED.sub(static, EXTERN.sub(dynamic, src))
    for m in re.finditer(r'__shared__', out):
        line_start = out.rfind('\n', 0, m.start()) + 1
        if '//' not in out[line_start:m.start()]:
            fail(path, out, m.start(), 'a __shared__ declaration the emulator does not model '
                 '(only `[extern] __shared__ [__align__(n)] T name[N]...;` on one line, '
                 '`extern` with `[]`, and `__shared__ T name;` are)')
    return out


def main():
    path, dst = sys.argv[1], sys.argv[2]
    src = open(path).read()
    text = shared(path, launches(path, src))
    with open(dst, 'w') as f:
        f.write(f'#line 1 "{os.path.abspath(path)}"\n' + text)


if __name__ == '__main__':
    main()
