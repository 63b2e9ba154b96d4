#!/usr/bin/env python3
"""Writes ADT encounters for patients of a roster CSV (the routing benchmark's input):
per encounter an ED registration (A04), an admission (A06), an A08 that moves the
patient, and a discharge (A03), separated by blank lines for `adt-router send`.

    scripts/gen-encounters.py ROSTER.csv ENCOUNTERS OUT.hl7 [SEED]
"""
import csv
import random
import sys

roster, encounters, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 7)
patients = {}
with open(roster, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
        patients.setdefault(row["patient_id"], row)
        if len(patients) >= 200_000:
            break
keys = list(patients)
with open(out, "w", encoding="utf-8", newline="") as f:
    for e in range(encounters):
        p = patients[rng.choice(keys)]
        # Half the encounters carry the roster identifier, half only demographics.
        pid3 = f"{p['patient_id']}^^^{p['assigning_authority']}^MR" if e % 2 == 0 else f"H{e:08}^^^GENHOSP^MR"
        dob = p["birth_date"].replace("-", "")
        for i, (trig, cls, unit) in enumerate(
            [("A04", "E", "ED"), ("A06", "I", "4W"), ("A08", "I", "ICU"), ("A03", "I", "ICU")]
        ):
            t = f"202611{1 + e % 28:02}{8 + i:02}0000"
            f.write(
                f"MSH|^~\\&|EPIC|GENHOSP|ADTR|HIE|{t}||ADT^{trig}|G{e:08}{i}|P|2.5.1\r"
                f"EVN|{trig}|{t}\r"
                f"PID|1||{pid3}||{p['family']}^{p['given']}||{dob}|{p['sex']}|||1 MAIN ST^^X^IL^{p['postal_code']}^USA^H\r"
                f"PV1|1|{cls}|{unit}^1^A^GENHOSP||||1234567893^HOUSE^GREG^^^^^^NPI|||MED|||||||||E{e:08}\r\n\n"
            )
