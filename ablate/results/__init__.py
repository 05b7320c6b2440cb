"""Results on any pyarrow filesystem: the layout and atomic publishing (storage), one driver per results directory
(lock), and the two tables every verdict is made from (collect)."""
