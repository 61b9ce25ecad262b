"""Revisited Oxford/Paris evaluation (imports ``index`` for distractors, ``datasets`` for gnd).

| module | job |
| --- | --- |
| ``protocol`` | revisitop's easy/medium/hard, junk removal, trapezoidal AP, mP@k |
| ``ranking`` | positions in a query's full ranking, with distractors from an index |
| ``report`` | descriptors + gnd (+ R1M index) -> the report and its Markdown table |
"""
