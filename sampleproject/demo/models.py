"""The sample project's one model: what its atomic task writes."""

from django.db import models


class LedgerEntry(models.Model):
    """A credit to an account, written by ``demo.tasks.credit_account`` (atomic=True): one
    per job, however often the job runs."""

    account = models.CharField(max_length=100)
    amount = models.IntegerField()
    job_id = models.CharField(max_length=36, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.account} +{self.amount}"
