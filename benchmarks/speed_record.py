"""The speed benchmark's record rendered as markdown."""
from __future__ import annotations


def _ms(s: float) -> str:
    return f'{s * 1e3:.0f} ms' if s < 10 else f'{s:.1f} s'


def to_markdown(rec: dict) -> str:
    """Render a record as the markdown file committed next to the JSON."""
    gpu = rec['machine']['device'] == 'cuda'
    lab = '' if gpu else ' (CPU)'
    lines = [f'# Backbone speed: toolkit vs timm vs mmpretrain ({rec["machine"]["device"].upper()})',
             '',
             f'Recorded {rec["date"]} by `{rec["command"]}`.', '',
             f'Machine: {rec["machine"]["cpu"]}, {rec["machine"]["logical_cpus"]} logical CPUs, '
             f'torch threads {rec["machine"]["torch_threads"]}'
             + (f', GPU {rec["machine"].get("gpu")}' if gpu else '')
             + f'; load average before/after the run: {rec["load_avg_before"]} / '
             f'{rec["load_avg_after"]}.', '',
             'Versions: ' + ', '.join(f'{k} {v}' for k, v in rec['versions'].items()) + '.', '']
    if rec.get('notes'):
        lines += ['Notes: ' + '; '.join(rec['notes']) + '.', '']
    lines += [
              f'Each cell is the median of {rec["repeats"]} timed repeats after {rec["warmup"]} '
              'warm-up, the implementations interleaved within every repeat (order rotated). '
              'Same random weights in all implementations. '
              + ('' if gpu else 'CPU timings of a shared machine: compare the ratios within this '
                 'run, not the absolute medians with other machines or runs.'), '',
              'Ratio = implementation median / toolkit median (above 1: the toolkit is faster).', '']
    if rec.get('interrupted'):
        lines += ['**Interrupted run** (timeout or Ctrl-C): the sections below are the ones it '
                  'finished; the others are missing.', '']
    lines += ['## Backbones', '',
              f'| arch | input | mode | batch | precision | ' + ' | '.join(
                  f'{i} median{lab}' for i in rec['impls']) + ' | ' + ' | '.join(
                  f'{i} / toolkit' for i in rec['impls'] if i != 'toolkit') + ' |',
              '|' + '---|' * (5 + 2 * len(rec['impls']) - 1)]
    for r in rec['backbones']:
        im = r['impls']
        lines.append(f'| {r["arch"]} | {r["input"][0]}x{r["input"][1]} | {r["mode"]} | '
                     f'{r.get("batch", 1)} | {r["precision"]} | ' + ' | '.join(_ms(im[i]['median_s']) for i in im)
                     + ' | ' + ' | '.join(f'{im[i]["vs_toolkit"]:.2f}x' for i in im
                                          if i != 'toolkit') + ' |')
    lines += ['', '## Output agreement (fp32)', '',
              '| arch | input | compared with the toolkit | what | max abs diff | within 1e-4 |',
              '|---|---|---|---|---|---|']
    for c in rec['checks']:
        for impl, v in c.get('outputs', {}).items():
            lines.append(f'| {c["arch"]} | {c["input"][0]}x{c["input"][1]} | {impl} | '
                         f'{v["compared"]} | {v["max_abs_diff"]:.2e} | {"yes" if v["ok"] else "NO"} |')
        if 'gradients_vs_mmpretrain' in c:
            v = c['gradients_vs_mmpretrain']
            lines.append(f'| {c["arch"]} | {c["input"][0]}x{c["input"][1]} | mmpretrain | '
                         f'{v["compared"]} | {v["max_abs_diff"]:.2e} | '
                         f'{"yes" if v["ok"] else "NO"} |')
    if rec.get('retinanet'):
        r = rec['retinanet']
        im = r['impls']
        lines += ['', '## RetinaNet-S12 training step', '',
                  f'`{r["config"]}` with each backbone implementation; batch {r["batch"]} of '
                  f'{r["input"][0]}x{r["input"][1]} synthetic images with 5 boxes each; '
                  f'{r["step"]}. Every timed step starts from the same weights. Initial losses '
                  f'agree to a relative {r["loss_max_rel_diff"]:.1e}.', '',
                  '| backbone | median' + lab + ' | / toolkit |', '|---|---|---|']
        for i, v in im.items():
            lines.append(f'| {i} | {_ms(v["median_s"])} | {v["vs_toolkit"]:.2f}x |')
    if rec.get('scaling'):
        lines += ['', '## Scaling with the input short side', '',
                  'Each point in a fresh process: latency is the median of the repeats after a '
                  'first call; memory is ' + rec['scaling'][0]['memory'] + '.', '',
                  '| impl | mode | input | median' + lab + ' | peak memory (MB) |',
                  '|---|---|---|---|---|']
        for r in rec['scaling']:
            lines.append(f'| {r["impl"]} | {r["mode"]} | {r["input"][0]}x{r["input"][1]} | '
                         f'{_ms(r["median_s"])} | {r["peak_mem_mb"]:.0f} |')
    if rec.get('switches'):
        s = rec['switches']
        lines += ['', '## Speed switches of the toolkit backbone', '',
                  f'{s["arch"]}, {s["input"][0]}x{s["input"][1]}, forward. First call with '
                  f'`compile=True` (includes compiling): {s["compile_first_call_s"]:.1f} s.', '']
        if s.get('compile_rejected'):
            lines += ['**The compiled forward was wrong and was dropped** (the backbone checks '
                      f'its first call against eager): {s["compile_rejected"]}. The compile row '
                      'below therefore times eager.', '']
        lines += ['| variant | median' + lab + ' | / toolkit | max abs diff vs fp32 eager |',
                  '|---|---|---|---|']
        for i, v in s['impls'].items():
            d = s['max_abs_diff_vs_fp32_eager'].get(i)
            lines.append(f'| {i} | {_ms(v["median_s"])} | {v["vs_toolkit"]:.2f}x | '
                         f'{"-" if d is None else f"{d:.2e}"} |')
    return '\n'.join(lines) + '\n'
