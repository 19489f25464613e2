"""Tables and figures from run outputs: run rows (``runs``), the metrics table the entry
points print (``tables``), Pareto plots (``pareto_plots``), latency plots (``latency_plots``)."""
