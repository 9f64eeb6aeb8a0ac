"""Asset kinds of the procedural generator (no bpy import: shared by both interpreters)."""

GOOD_KINDS = ["storage", "table", "laptop", "bucket", "refrigerator", "dishwasher", "box", "safe", "toilet",
              "fish", "quadruped"]
BAD_KINDS = ["bad_static", "bad_global", "bad_exploding"]
KINDS = GOOD_KINDS + BAD_KINDS
CATEGORY = {"storage": "StorageFurniture", "table": "Table", "laptop": "Laptop", "bucket": "Bucket",
            "refrigerator": "Refrigerator", "dishwasher": "Dishwasher", "box": "Box", "safe": "Safe",
            "toilet": "Toilet", "fish": "Fish", "quadruped": "Quadruped"}
