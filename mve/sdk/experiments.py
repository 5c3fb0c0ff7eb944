"""``mve.client("experiments")``: feedback, experiment reports and bandit policies (mve's own API).

    smr = mve.client("sagemaker-runtime")
    exp = mve.client("experiments")
    answer = smr.invoke_endpoint(EndpointName="cancer", Body=row, ContentType="text/csv")
    exp.send_feedback(EndpointName="cancer",
                      Feedback=[{"InferenceId": answer["InferenceId"], "GroundTruthLabels": [1]}])
    report = exp.get_experiment_report(EndpointName="cancer", BaselineVariant="Variant1")
    exp.put_bandit_policy(EndpointName="cancer", ExplorationFloor=0.05, MaxWeightChange=0.2)

The service is ``mve.v1.Experiments`` on the control plane's address (SageMaker has none like it;
the names follow its style). Quality and reward figures need data capture on the endpoint:
feedback is joined to the captured invocation through its inference id (docs/experiments.md).
Errors are ``client.exceptions.<Code>`` as on the sagemaker client (ValidationException, ...).
"""

from __future__ import annotations

from mve._proto import experiments_pb2_grpc
from mve.sdk import experiments_convert as convert
from mve.sdk.base import BaseClient, operation_method

# snake_case method -> API operation name; each method takes the operation's keyword arguments.
OPERATIONS = {
    "send_feedback": "SendFeedback",
    "get_experiment_report": "GetExperimentReport",
    "put_bandit_policy": "PutBanditPolicy",
    "describe_bandit_policy": "DescribeBanditPolicy",
    "delete_bandit_policy": "DeleteBanditPolicy",
}

# SendFeedback takes at most this many entries per call.
MAX_FEEDBACK_PER_CALL = 1000


def _operation_method(method_name: str, operation: str):
    return operation_method("ExperimentsClient", "experiments", method_name, operation, convert)


class ExperimentsClient(BaseClient):
    """The control plane's ``mve.v1.Experiments``: keyword arguments in, plain dicts out.

    - ``send_feedback(EndpointName, Feedback=[{"InferenceId", "GroundTruthLabels"?, "Reward"?,
      "ObservationTime"?}])`` -> ``{"Accepted": n}``; 1-1,000 entries per call.
    - ``get_experiment_report(EndpointName, StartTime?, EndTime?, BaselineVariant?, ConfidenceLevel?,
      LabelOutput?, ScoreOutput?, PositiveLabel?, SeriesPoints?)`` -> the report (``Variants``,
      ``SampleRatio``, ``Series``, ``WeightChanges``, ``Notes``, ...).
    - ``put_bandit_policy(EndpointName, IntervalInSeconds?, ExplorationFloor?, MaxWeightChange?,
      MinRewardsPerVariant?, WindowInSeconds?)``, ``describe_bandit_policy(EndpointName)`` ->
      ``{"Policy": {...}}``, ``delete_bandit_policy(EndpointName)``.
    """

    service_name = "experiments"
    _shapes = convert.OPERATIONS

    def __init__(self, address: str, timeout: float = 30.0, security=None):
        super().__init__(address, timeout, security)
        self._stub = experiments_pb2_grpc.ExperimentsStub(self._channel)


for _name, _operation in OPERATIONS.items():
    setattr(ExperimentsClient, _name, _operation_method(_name, _operation))

__all__ = ["ExperimentsClient", "MAX_FEEDBACK_PER_CALL", "OPERATIONS"]
