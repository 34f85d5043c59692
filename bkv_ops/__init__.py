"""Operations plumbing shared by the two servers (vault node and ChatD): health and metrics.

Neither server imports the other; what both need lives here.
"""
